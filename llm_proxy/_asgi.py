"""The proxy as an ASGI application, for users who mount it in an ASGI server.

`llm-proxy serve` runs the app on our own engine (`http11`); `asgi_app(ProxyApp(...))` gives
the same app to hypercorn, uvicorn or any ASGI server running on trio. The adapter does
what the engine does for the app: it reads the request body within `max_body_bytes` and
`read_timeout`, and cancels the handler when the client disconnects. The last piece of each
answer is sent after the disconnect watcher is gone: servers close or recycle the
connection inside that send, which must not be cancelled midway.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from time import perf_counter
from typing import Any

import trio

from http11 import Request as HTTPRequest
from pipeline import Context, PayloadTooLargeError, ProxyError, ValidationError

from ._app import ProxyApp
from ._config import ServerConfig
from ._exchange import Exchange, Headers
from ._openai import CHAT

__all__ = ["ASGIApp", "asgi_app"]

Scope = Mapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_DEFAULTS = ServerConfig()


class _Disconnected(Exception):
    """The client went away while the request body was being read."""


class _Responder:
    """The engine's responder interface over ASGI's `send`; the last message is held back."""

    __slots__ = ("_send", "last", "shutting_down", "started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.shutting_down = False
        self.last: Message | None = None

    async def respond(self, status: int, headers: Headers, body: bytes = b"") -> None:
        self.started = True
        headers = [*headers, (b"content-length", b"%d" % len(body))]
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        self.last = {"type": "http.response.body", "body": body}

    async def start(self, status: int, headers: Headers) -> None:
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def write(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self) -> None:
        self.last = {"type": "http.response.body", "body": b""}


async def _cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    """Cancel `scope` when the client goes away (the body is read: nothing else arrives)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


def asgi_app(
    app: ProxyApp,
    *,
    max_body_bytes: int = _DEFAULTS.max_body_bytes,
    read_timeout: float = _DEFAULTS.read_timeout,
) -> ASGIApp:
    """`app` as an ASGI application.

    Args:
      app: the proxy application.
      max_body_bytes: larger request bodies are refused with a 413 before they are read.
      read_timeout: seconds a client may take to send its request body; one that takes
        longer gets a 408.
    """

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        responder = _Responder(send)
        headers: list[tuple[bytes, bytes]] = list(scope["headers"])
        try:
            body = await _read_body(headers, receive, max_body_bytes, read_timeout)
        except _Disconnected:
            return
        except ProxyError as error:
            ctx = Context(headers={k.decode("latin-1"): v.decode("latin-1") for k, v in headers})
            await Exchange(responder, ctx, perf_counter(), CHAT).reject(error)
        else:
            target = scope.get("raw_path") or scope["path"].encode("latin-1")
            if scope.get("query_string"):
                target += b"?" + scope["query_string"]
            request = HTTPRequest(
                scope["method"].encode("latin-1"),
                target,
                headers,
                scope.get("http_version", "1.1"),
                True,
                body,
                scope.get("client"),
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
                await app(request, responder)
                nursery.cancel_scope.cancel()
        if responder.last is not None:
            await send(responder.last)

    return application


async def _read_body(
    headers: list[tuple[bytes, bytes]], receive: Receive, limit: int, seconds: float
) -> bytes:
    """The request body, refusing one larger than `limit` or slower than `seconds`.

    A declared `content-length` over the limit is refused before anything is read; a
    chunked body is counted as it arrives and refused as soon as it passes the limit.
    """
    declared = next((value for name, value in headers if name == b"content-length"), None)
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    with trio.move_on_after(seconds):
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            piece: bytes = message.get("body", b"")
            size += len(piece)
            if size > limit:
                raise _too_large(limit)
            parts.append(piece)
            if not message.get("more_body", False):
                return b"".join(parts)
    raise ValidationError(
        f"The request body did not arrive within {seconds:g} s.",
        code="request_timeout",
        status=408,
    )


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"The request body is larger than {limit} bytes.")
