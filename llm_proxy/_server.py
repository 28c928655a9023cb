"""The OpenAI-compatible HTTP front: an ASGI application served by hypercorn on trio.

    POST /v1/chat/completions   chat, streamed as server-sent events or answered whole
    POST /v1/completions        the legacy text-completions API, translated to chat
    GET  /v1/models             the model names the caller may use
    GET  /v1/models/{model}     one of them, or a 404
    GET  /healthz               200 while serving (HEAD too)
    GET  /metrics               Prometheus text, when the stack provides an exporter

Every answer carries `x-request-id`, the headers middlewares left in
`ctx.response_headers` (rate-limit state, `x-cache`), and `x-proxy-overhead-ms`: the time
the proxy spent on the request minus the time it waited on the provider (for a stream,
up to its first chunk, when the headers leave). Every error, the server's own and the
pipeline's, is an OpenAI-shaped JSON body with the matching status.

While the pipeline runs, a watcher task waits for the client's `http.disconnect` and then
cancels the request, which closes the response stream and so the upstream call: before
the first byte, mid-stream, and for answers that are not streamed.
"""

from __future__ import annotations

import inspect
import math
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from time import perf_counter
from typing import Any

import msgspec
import structlog
import trio

from pipeline import (
    Context,
    NotFoundError,
    PayloadTooLargeError,
    Pipeline,
    ProxyError,
    Router,
    ValidationError,
)
from pipeline._stream import CLEANUP_TIMEOUT
from pipeline._types import (
    ChatCompletion,
    Chunk,
    Message,
    Request,
    Usage,
    _any_decoder,
    _fields_decoder,
    decode_request,
    decoding_error,
)

from ._config import ServerConfig
from ._stack import MetricsExporter, ModelsFor

__all__ = ["ProxyApp", "serve"]

log = structlog.get_logger("llm_proxy.server")

Scope = Mapping[str, Any]
ASGIMessage = Mapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
Endpoint = Callable[[Scope, Receive, Send, Context, float], Awaitable[None]]

_encoder = msgspec.json.Encoder()

_JSON = (b"content-type", b"application/json")
_SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # Tell buffering reverse proxies (nginx) to pass events through as they come.
    (b"x-accel-buffering", b"no"),
]
_DONE = b"data: [DONE]\n\n"
_HEALTHY = b'{"status":"ok"}'
_MODEL_PREFIX = "/v1/models/"

_DEFAULTS = ServerConfig()
_INTERNAL = ProxyError("The proxy failed to handle the request.", code="internal_error")


class _Disconnected(Exception):
    """The client went away while the request body was being read."""


# -- the legacy completions API --------------------------------------------------------------


class _TextChoice(msgspec.Struct):
    text: str
    index: int
    logprobs: None = None
    finish_reason: str | None = None


class _TextCompletion(msgspec.Struct, omit_defaults=True):
    """OpenAI's `text_completion`: a whole answer, or one streamed piece of it."""

    id: str
    created: int
    model: str
    choices: list[_TextChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    object: str = msgspec.field(default_factory=lambda: "text_completion")


_prompt_decoder = msgspec.json.Decoder(str | list[str])

# Legacy fields chat upstreams do not know, with the values that leave the answer as chat
# gives it: those are dropped, any other value is refused.
_HARMLESS: dict[str, tuple[object, ...]] = {
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
}


def decode_completion_request(body: bytes) -> Request:
    """Decode a legacy completions request into the chat request it stands for.

    The prompt becomes one user message; every other field keeps its name (`max_tokens`,
    `temperature`, `stop`, `stream`, ...), and unknown ones land in `request.extra`.
    `echo`, `suffix` and `best_of`, which chat upstreams do not know, are dropped when they
    leave the answer as it is (false, empty, 1) and refused otherwise.

    Raises:
      ValidationError: the body is not a JSON object or is nested too deeply, the prompt is
        missing or is not one string, a field asks for what chat cannot do (`echo`,
        `suffix`, `best_of`, `logprobs`), or a field has a wrong type or value (`param`
        names it).
    """
    try:
        fields = _fields_decoder.decode(body)
    except msgspec.ValidationError:
        raise ValidationError("The request body must be a JSON object.") from None
    except Exception as exc:
        raise decoding_error(exc) from None
    raw = fields.pop("prompt", None)
    if raw is None:
        raise ValidationError("Object missing required field `prompt`", param="prompt")
    try:
        prompt = _prompt_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        message = str(exc).partition(" - at ")[0]
        raise ValidationError(message, param="prompt") from None
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise ValidationError("Send exactly one prompt per request.", param="prompt")
        prompt = prompt[0]
    for name in ("messages", "logprobs"):
        if name in fields:
            raise ValidationError(f"`{name}` is not supported on /v1/completions.", param=name)
    for name, harmless in _HARMLESS.items():
        raw_value = fields.pop(name, None)
        if raw_value is not None and _any_decoder.decode(raw_value) not in harmless:
            allowed = _encoder.encode(harmless[1]).decode()
            raise ValidationError(
                f"`{name}` is not supported on /v1/completions (only {allowed}).", param=name
            )
    fields["messages"] = msgspec.Raw(_encoder.encode([Message(role="user", content=prompt)]))
    return decode_request(_encoder.encode(fields))


# -- how each endpoint encodes its answers ---------------------------------------------------


def _chat_event(chunk: Chunk) -> bytes:
    return b"data: %b\n\n" % _encoder.encode(chunk)


def _text_completion(answer: Chunk | ChatCompletion, choices: list[_TextChoice]) -> bytes:
    # OpenAI's text completions have `cmpl-` ids; chat's are `chatcmpl-`.
    return _encoder.encode(
        _TextCompletion(
            "cmpl-" + answer.id.removeprefix("chatcmpl-"),
            answer.created,
            answer.model,
            choices,
            answer.usage,
            answer.system_fingerprint,
        )
    )


def _text_event(chunk: Chunk) -> bytes:
    choices = [
        _TextChoice(c.delta.content or "", c.index, None, c.finish_reason) for c in chunk.choices
    ]
    return b"data: %b\n\n" % _text_completion(chunk, choices)


def _text_whole(answer: ChatCompletion) -> bytes:
    choices = [
        _TextChoice(c.message.content or "", c.index, None, c.finish_reason) for c in answer.choices
    ]
    return _text_completion(answer, choices)


class _Shape(msgspec.Struct, frozen=True):
    """How an endpoint decodes its request and encodes stream events and whole answers."""

    decode: Callable[[bytes], Request]
    event: Callable[[Chunk], bytes]
    whole: Callable[[ChatCompletion], bytes]


_CHAT = _Shape(decode_request, _chat_event, _encoder.encode)
_TEXT = _Shape(decode_completion_request, _text_event, _text_whole)


class _Model(msgspec.Struct):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "llm-proxy"


class _ModelList(msgspec.Struct):
    data: list[_Model]
    object: str = "list"


# -- the application -----------------------------------------------------------------------


def _without_usage(chunk: Chunk) -> Chunk | None:
    """The chunk as a client that did not ask for usage sees it (None: drop it)."""
    if chunk.usage is None:
        return chunk
    if not chunk.choices:
        return None
    return msgspec.structs.replace(chunk, usage=None)


async def _cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    """Cancel `scope` when the client goes away.

    Runs once the body is read, so the only message left to arrive is the disconnect. It
    is cancelled before the last piece of the response is sent: hypercorn sends a
    disconnect of its own when a response completes.
    """
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


class ProxyApp:
    """The OpenAI-compatible ASGI application in front of a pipeline.

    Args:
      pipeline: what answers the model calls.
      models_for: the model names a caller may use, listed at `/v1/models`; by default
        the models of the pipeline's `Router`, if its provider is one.
      metrics: renders `/metrics` as (body, content type); without it `/metrics` is a 404.
      max_body_bytes: larger request bodies are refused with a 413 before they are read.
      read_timeout: seconds a client may take to send its request body; one that takes
        longer gets a 408 and the connection is closed.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        models_for: ModelsFor | None = None,
        metrics: MetricsExporter | None = None,
        max_body_bytes: int = _DEFAULTS.max_body_bytes,
        read_timeout: float = _DEFAULTS.read_timeout,
    ) -> None:
        self.pipeline = pipeline
        if models_for is None:
            provider = pipeline.provider
            names = provider.models if isinstance(provider, Router) else []

            def models_for(ctx: Context) -> list[str]:
                return names

        self.models_for = models_for
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.read_timeout = read_timeout
        self._routes: dict[str, dict[str, Endpoint]] = {
            "/v1/chat/completions": {"POST": partial(self._model_call, _CHAT)},
            "/v1/completions": {"POST": partial(self._model_call, _TEXT)},
            "/v1/models": {"GET": self._models},
            "/healthz": {"GET": self._health, "HEAD": self._health},
            "/metrics": {"GET": self._metrics},
        }
        self._model_routes: dict[str, Endpoint] = {"GET": self._model}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = perf_counter()
        ctx = Context(headers=_decode_headers(scope))
        try:
            await self._route(scope, receive, send, ctx, started)
        except Exception:
            # A bug, or a failure nothing on the way answers: the client still gets an
            # OpenAI-shaped 500 with its request id, never hypercorn's bare one.
            await _answer_failure(send, ctx)

    async def _route(
        self, scope: Scope, receive: Receive, send: Send, ctx: Context, started: float
    ) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        methods = self._routes.get(path)
        if methods is None and path.startswith(_MODEL_PREFIX) and len(path) > len(_MODEL_PREFIX):
            methods = self._model_routes
        if methods is None:
            unknown = NotFoundError(f"Unknown path: {method} {path}", code="unknown_url")
            await _send_error(send, unknown, ctx, started)
            return
        endpoint = methods.get(method)
        if endpoint is None:
            allowed = ", ".join(methods)
            error = ValidationError(
                f"{method} is not allowed on {path}; use {allowed}.",
                code="method_not_allowed",
                status=405,
            )
            await _send_error(send, error, ctx, started, [(b"allow", allowed.encode())])
            return
        await endpoint(scope, receive, send, ctx, started)

    # -- model calls -----------------------------------------------------------------------

    async def _model_call(
        self,
        shape: _Shape,
        scope: Scope,
        receive: Receive,
        send: Send,
        ctx: Context,
        started: float,
    ) -> None:
        try:
            request = shape.decode(await self._read_body(ctx.headers, receive))
        except _Disconnected:
            return
        except ProxyError as exc:
            await _send_error(send, exc, ctx, started)
            return
        # The last piece of the body is sent after the watcher is gone: hypercorn closes
        # or recycles the connection inside that send, which must not be cancelled midway.
        last: bytes | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
            if request.stream:
                last = await self._stream(shape, request, ctx, send, started)
            else:
                last = await self._whole(shape, request, ctx, send, started)
            nursery.cancel_scope.cancel()
        if last is not None:
            await _finish(send, last)

    async def _read_body(self, headers: Mapping[str, str], receive: Receive) -> bytes:
        """Read the request body, refusing one larger than `max_body_bytes` or slower than
        `read_timeout`.

        A declared `content-length` over the limit is refused before anything is read; a
        chunked body is counted as it arrives and refused as soon as it passes the limit.
        The time limit is for the whole body, so a client cannot hold the connection by
        sending a byte now and then. (hypercorn's own `read_timeout` would bound each read
        of the connection, also while a long answer streams and the client sends nothing.)
        """
        limit = self.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        with trio.move_on_after(self.read_timeout):
            return await self._receive_body(receive, limit)
        raise ValidationError(
            f"The request body did not arrive within {self.read_timeout:g} s.",
            code="request_timeout",
            status=408,
        )

    async def _receive_body(self, receive: Receive, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            body: bytes = message.get("body", b"")
            size += len(body)
            if size > limit:
                raise _too_large(limit)
            if not message.get("more_body", False):
                if not parts:
                    return body
                parts.append(body)
                return b"".join(parts)
            parts.append(body)

    async def _whole(
        self, shape: _Shape, request: Request, ctx: Context, send: Send, started: float
    ) -> bytes:
        """Answer with the whole response; returns the body left to send."""
        try:
            stream = await self.pipeline.handle(request, ctx)
            answer = await stream.collect()
        except Exception as exc:
            return await _start_failure(send, exc, ctx, started)
        return await _start_json(send, 200, shape.whole(answer), _response_headers(ctx, started))

    async def _stream(
        self, shape: _Shape, request: Request, ctx: Context, send: Send, started: float
    ) -> bytes:
        """Answer with server-sent events; returns the last event, left to send."""
        try:
            stream = await self.pipeline.handle(request, ctx)
        except Exception as exc:
            return await _start_failure(send, exc, ctx, started)
        async with stream:
            if not request.wants_usage:
                stream = stream.map(_without_usage)
            encode = shape.event
            pull = stream.__anext__
            try:
                first = await pull()
            except StopAsyncIteration:
                first = None
            except Exception as exc:
                return await _start_failure(send, exc, ctx, started)
            headers = _SSE_HEADERS + _response_headers(ctx, started)
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            if first is None:
                return _DONE
            await send({"type": "http.response.body", "body": encode(first), "more_body": True})
            sent = 1
            while True:
                try:
                    chunk = await pull()
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    return _stream_error_event(exc, ctx, sent)
                await send({"type": "http.response.body", "body": encode(chunk), "more_body": True})
                sent += 1
        return _DONE

    # -- the rest --------------------------------------------------------------------------

    async def _models(
        self, scope: Scope, receive: Receive, send: Send, ctx: Context, started: float
    ) -> None:
        try:
            names = await self._model_names(ctx)
        except ProxyError as exc:
            await _send_error(send, exc, ctx, started)
            return
        except Exception as exc:
            await _finish(send, await _start_failure(send, exc, ctx, started))
            return
        body = _encoder.encode(_ModelList([_Model(name) for name in names]))
        await _send_json(send, 200, body, _response_headers(ctx, started))

    async def _model(
        self, scope: Scope, receive: Receive, send: Send, ctx: Context, started: float
    ) -> None:
        name = scope["path"][len(_MODEL_PREFIX) :]
        try:
            if name not in await self._model_names(ctx):
                raise NotFoundError(f"The model `{name}` does not exist.", param="model")
        except ProxyError as exc:
            await _send_error(send, exc, ctx, started)
            return
        except Exception as exc:
            await _finish(send, await _start_failure(send, exc, ctx, started))
            return
        await _send_json(send, 200, _encoder.encode(_Model(name)), _response_headers(ctx, started))

    async def _model_names(self, ctx: Context) -> Sequence[str]:
        names = self.models_for(ctx)
        if inspect.isawaitable(names):
            names = await names
        return names

    async def _health(
        self, scope: Scope, receive: Receive, send: Send, ctx: Context, started: float
    ) -> None:
        request_id = (b"x-request-id", ctx.request_id.encode())
        if scope["method"] == "HEAD":
            headers = [_JSON, (b"content-length", b"%d" % len(_HEALTHY)), request_id]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await _finish(send, b"")
            return
        await _send_json(send, 200, _HEALTHY, [request_id])

    async def _metrics(
        self, scope: Scope, receive: Receive, send: Send, ctx: Context, started: float
    ) -> None:
        if self.metrics is None:
            error = NotFoundError("Metrics are not enabled on this server.", code="unknown_url")
            await _send_error(send, error, ctx, started)
            return
        try:
            body, content_type = self.metrics()
        except Exception as exc:
            await _finish(send, await _start_failure(send, exc, ctx, started))
            return
        headers = [
            (b"content-type", content_type.encode("latin-1")),
            (b"content-length", b"%d" % len(body)),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _decode_headers(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"The request body is larger than {limit} bytes.")


def _response_headers(ctx: Context, started: float, error: ProxyError | None = None) -> Headers:
    """`x-request-id`, the middlewares' and the error's headers, the proxy's overhead so far."""
    headers = [(b"x-request-id", ctx.request_id.encode())]
    extra = ctx.response_headers
    if error is not None and (error.headers or error.retry_after is not None):
        extra = {**extra, **{name.lower(): value for name, value in error.headers.items()}}
        if error.retry_after is not None:
            extra.setdefault("retry-after", str(math.ceil(error.retry_after)))
    for name, value in extra.items():
        headers.append((name.encode("latin-1"), value.encode("latin-1")))
    overhead = (perf_counter() - started - ctx.upstream_wait) * 1000
    headers.append((b"x-proxy-overhead-ms", b"%.3f" % overhead))
    return headers


async def _finish(send: Send, body: bytes) -> None:
    """Send the last piece of a response body."""
    await send({"type": "http.response.body", "body": body})


async def _start_json(send: Send, status: int, body: bytes, headers: Headers) -> bytes:
    """Start a JSON response; returns its body, for `_finish`."""
    headers = [_JSON, (b"content-length", b"%d" % len(body)), *headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    return body


async def _send_json(send: Send, status: int, body: bytes, headers: Headers) -> None:
    await _finish(send, await _start_json(send, status, body, headers))


async def _start_error(
    send: Send,
    error: ProxyError,
    ctx: Context,
    started: float,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    """Start an OpenAI-shaped error response; returns its body, for `_finish`."""
    headers = _response_headers(ctx, started, error)
    headers.extend(extra)
    return await _start_json(send, error.status, error.to_json(), headers)


async def _send_error(
    send: Send,
    error: ProxyError,
    ctx: Context,
    started: float,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Answer a request the server turned away before any pipeline saw it, and log it.

    The access log middleware only sees requests that reach the pipeline; a malformed
    body, an unknown path or a refused key on `/v1/models` is logged here instead.
    """
    log.info(
        "request_rejected",
        request_id=ctx.request_id,
        status=error.status,
        error=error.type,
        error_message=error.message,
    )
    await _finish(send, await _start_error(send, error, ctx, started, extra))


async def _start_failure(send: Send, exc: Exception, ctx: Context, started: float) -> bytes:
    """Start the answer to an exception raised before the response started."""
    if not isinstance(exc, ProxyError):
        log.exception("request_failed", request_id=ctx.request_id)
        exc = _INTERNAL
    return await _start_error(send, exc, ctx, started)


async def _answer_failure(send: Send, ctx: Context) -> None:
    """Log an exception that escaped an endpoint, and answer it with a 500 if still possible.

    The answer carries only `x-request-id`: the failure may lie in the other headers. If
    the response had started, the server refuses the new one, and the connection ends
    without the rest of the response instead.
    """
    log.exception("request_failed", request_id=ctx.request_id)
    headers = [(b"x-request-id", ctx.request_id.encode())]
    try:
        await _send_json(send, 500, _INTERNAL.to_json(), headers)
    except Exception:
        log.warning("failure_unanswered", request_id=ctx.request_id)


def _stream_error_event(exc: Exception, ctx: Context, sent: int) -> bytes:
    """The event that ends a stream broken after its first event; the failure is logged."""
    if isinstance(exc, ProxyError):
        log.warning(
            "stream_failed",
            request_id=ctx.request_id,
            provider=ctx.provider,
            events_sent=sent,
            status=exc.status,
            error=exc.message,
        )
    else:
        log.exception("stream_failed", request_id=ctx.request_id, events_sent=sent)
        exc = _INTERNAL
    return b"data: %b\n\n" % exc.to_json()


# -- serving ---------------------------------------------------------------------------------


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(
    pipeline: Pipeline,
    *,
    host: str = _DEFAULTS.host,
    port: int = _DEFAULTS.port,
    models_for: ModelsFor | None = None,
    metrics: MetricsExporter | None = None,
    max_body_bytes: int = _DEFAULTS.max_body_bytes,
    read_timeout: float = _DEFAULTS.read_timeout,
    keep_alive_timeout: float = _DEFAULTS.keep_alive_timeout,
    grace_period: float = _DEFAULTS.grace_period,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    handle_signals: bool = True,
    sock: socket.socket | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `pipeline` over HTTP until shut down, then close it.

    Shutdown starts when `shutdown_trigger` returns or, with `handle_signals`, on SIGINT or
    SIGTERM. The server stops accepting connections, lets running requests finish for up
    to `grace_period` seconds, cancels what is left (closing those streams), and closes
    the pipeline (`pipeline.aclose()`). A second signal skips the grace period.

    Use it with `trio.run(partial(serve, pipeline, port=8080))`, or start it in a nursery
    to learn the address: `url = await nursery.start(partial(serve, pipeline, port=0))`.

    Args:
      pipeline: the stack to serve; closed when the server stops.
      host: the address to listen on.
      port: the port to listen on; 0 picks a free one (the URL reports it).
      models_for: see `ProxyApp`.
      metrics: see `ProxyApp`.
      max_body_bytes: see `ProxyApp`.
      read_timeout: see `ProxyApp`.
      keep_alive_timeout: seconds an idle connection, or one whose request headers are
        not complete, stays open.
      grace_period: seconds running requests may take to finish after shutdown starts.
      shutdown_trigger: an async function whose return starts the shutdown.
      handle_signals: shut down on SIGINT/SIGTERM (only possible in the main thread).
      sock: a listening socket to accept connections on, instead of binding `host` and
        `port` (the worker processes of `llm-proxy serve --workers` share their parent's).
      task_status: receives the server's base URL (`http://127.0.0.1:8080`) once it
        listens.
    """
    from hypercorn.config import Config, Sockets
    from hypercorn.trio.run import worker_serve
    from hypercorn.utils import wrap_app

    app = ProxyApp(
        pipeline,
        models_for=models_for,
        metrics=metrics,
        max_body_bytes=max_body_bytes,
        read_timeout=read_timeout,
    )
    config = Config()
    config.bind = [_bind(host, port)]
    config.keep_alive_timeout = keep_alive_timeout
    config.graceful_timeout = grace_period
    config.accesslog = None
    config.loglevel = "WARNING"
    stop = trio.Event()

    async def run_server(task_status: trio.TaskStatus[list[str]]) -> None:
        # hypercorn's ASGI types are TypedDicts; the app takes the same events as mappings.
        asgi: Any = app
        # What `hypercorn.trio.serve` runs, which cannot be handed a bound socket.
        sockets = Sockets([], [sock], []) if sock is not None else None
        try:
            await worker_serve(
                wrap_app(asgi, config.wsgi_max_body_size, "asgi"),
                config,
                sockets=sockets,
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
        finally:
            # The shutdown is done (or was forced): the signal and trigger watchers go too.
            nursery.cancel_scope.cancel()

    async def wait_for_trigger(trigger: Callable[[], Awaitable[object]]) -> None:
        await trigger()
        stop.set()

    async def wait_for_signals() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if stop.is_set():
                    log.warning("shutdown_forced", signal=signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return
                log.info(
                    "shutdown_started",
                    signal=signal.Signals(signum).name,
                    grace_period=grace_period,
                )
                stop.set()

    try:
        async with trio.open_nursery() as nursery:
            if handle_signals:
                nursery.start_soon(wait_for_signals)
            if shutdown_trigger is not None:
                nursery.start_soon(wait_for_trigger, shutdown_trigger)
            binds = await nursery.start(run_server)
            log.info("listening", url=binds[0])
            task_status.started(binds[0])
    finally:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CLEANUP_TIMEOUT):
            await pipeline.aclose()
        log.info("stopped")
