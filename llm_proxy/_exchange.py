"""Writing one request's answer: headers, JSON, server-sent events and errors.

An `Exchange` is made per request and holds what every answer needs (the responder, the
context, when the request arrived, the door's dialect), so the endpoints call
`exchange.json(...)`, `exchange.reject(error)` or `exchange.event(data)` instead of
threading those through helper functions. It writes through a `Responder`: the engine's
(`http11.Responder`) or the ASGI adapter's, which share one small interface.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from time import perf_counter
from typing import Protocol

import structlog

from pipeline import Context, ProxyError

from ._dialect import Dialect

__all__ = ["INTERNAL", "SHUTTING_DOWN", "Exchange", "Headers", "Responder"]

log = structlog.get_logger("llm_proxy.server")

Headers = list[tuple[bytes, bytes]]

INTERNAL = ProxyError("The proxy failed to handle the request.", code="internal_error")
SHUTTING_DOWN = ProxyError(
    "The server is shutting down; the stream was cut at the end of its grace period.",
    code="server_shutting_down",
    status=503,
)

_JSON = (b"content-type", b"application/json")
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # Tell buffering reverse proxies (nginx) to pass events through as they come.
    (b"x-accel-buffering", b"no"),
]


class Responder(Protocol):
    """What an exchange writes through: the engine's responder, or the ASGI adapter."""

    started: bool
    shutting_down: bool

    async def respond(self, status: int, headers: Headers, body: bytes = b"") -> None: ...

    async def start(self, status: int, headers: Headers) -> None: ...

    async def write(self, data: bytes) -> None: ...

    async def end(self) -> None: ...


class Exchange:
    """One request's answer being written.

    Attributes:
      responder: where the answer goes.
      ctx: the request's context (its id, the headers middlewares left, upstream wait).
      started: `perf_counter()` when the request arrived, for `x-proxy-overhead-ms`.
      dialect: how errors and events are shaped for the door the request came through.
      events: stream events written so far.
    """

    __slots__ = ("ctx", "dialect", "events", "responder", "started")

    def __init__(
        self, responder: Responder, ctx: Context, started: float, dialect: Dialect
    ) -> None:
        self.responder = responder
        self.ctx = ctx
        self.started = started
        self.dialect = dialect
        self.events = 0

    def headers(self, error: ProxyError | None = None) -> Headers:
        """`x-request-id`, the middlewares' and the error's headers, the proxy's overhead."""
        ctx = self.ctx
        headers = [(b"x-request-id", ctx.request_id.encode())]
        extra = ctx.response_headers
        if error is not None and (error.headers or error.retry_after is not None):
            extra = {**extra, **{name.lower(): value for name, value in error.headers.items()}}
            if error.retry_after is not None:
                extra.setdefault("retry-after", str(math.ceil(error.retry_after)))
        for name, value in extra.items():
            headers.append((name.encode("latin-1"), value.encode("latin-1")))
        overhead = (perf_counter() - self.started - ctx.upstream_wait) * 1000
        headers.append((b"x-proxy-overhead-ms", b"%.3f" % overhead))
        return headers

    async def json(
        self, status: int, body: bytes, headers: Headers | None = None, *, content_type: bytes = b""
    ) -> None:
        """Answer whole with a JSON (or `content_type`) body."""
        head = [(b"content-type", content_type) if content_type else _JSON]
        head += self.headers() if headers is None else headers
        await self.responder.respond(status, head, body)

    async def error(self, error: ProxyError, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
        """Answer with `error` in the door's shape, its status and its headers."""
        headers = self.headers(error)
        headers.extend(extra)
        await self.json(self.dialect.status(error), self.dialect.error(error), headers)

    async def reject(self, error: ProxyError, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
        """Answer a request turned away before any pipeline saw it, and log it.

        The access log middleware only sees requests that reach the pipeline; a malformed
        body, an unknown path or a refused key on `/v1/models` is logged here instead.
        """
        log.info(
            "request_rejected",
            request_id=self.ctx.request_id,
            status=error.status,
            error=error.type,
            error_message=error.message,
        )
        await self.error(error, extra)

    async def refuse(self, exc: Exception) -> None:
        """Answer an endpoint that could not do its work: one of our errors is a rejection
        (logged as such), anything else a logged 500."""
        if isinstance(exc, ProxyError):
            await self.reject(exc)
        else:
            await self.failure(exc)

    async def failure(self, exc: Exception) -> None:
        """Answer an exception raised before the response started (a 500 unless it is ours)."""
        if not isinstance(exc, ProxyError):
            log.exception("request_failed", request_id=self.ctx.request_id)
            exc = INTERNAL
        await self.error(exc)

    async def start_events(self) -> None:
        """Start a stream of server-sent events."""
        await self.responder.start(200, SSE_HEADERS + self.headers())

    async def event(self, data: bytes) -> None:
        """Write one event (already framed); events ready together leave in one write."""
        await self.responder.write(data)
        self.events += 1

    async def end_events(self, last: bytes) -> None:
        """Write the last event and end the stream."""
        await self.responder.write(last)
        await self.responder.end()

    async def stream_failed(self, exc: BaseException) -> None:
        """End a stream broken after its first event with the door's error event, and log it.

        A stream cut because the server's grace period ran out says so, to the client and
        in the log, instead of looking like a client that hung up.
        """
        ctx = self.ctx
        error: ProxyError
        if self.responder.shutting_down:
            log.warning(
                "stream_cut_by_shutdown", request_id=ctx.request_id, events_sent=self.events
            )
            error = SHUTTING_DOWN
        elif isinstance(exc, ProxyError):
            log.warning(
                "stream_failed",
                request_id=ctx.request_id,
                provider=ctx.provider,
                events_sent=self.events,
                status=exc.status,
                error=exc.message,
            )
            error = exc
        else:
            log.error(
                "stream_failed", request_id=ctx.request_id, events_sent=self.events, exc_info=exc
            )
            error = INTERNAL
        await self.end_events(self.dialect.error_event(error))
