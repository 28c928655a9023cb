"""The HTTP application in front of a pipeline: routing, and each endpoint.

    POST /v1/chat/completions   chat, streamed as server-sent events or answered whole
    POST /v1/completions        the legacy text-completions API, translated to chat
    POST /v1/messages           Anthropic's Messages API (its token count at .../count_tokens)
    POST /v1/responses          OpenAI's Responses API
    POST /v1/embeddings         OpenAI's embeddings
    GET  /v1/models             the model names the caller may use
    GET  /v1/models/{model}     one of them, or a 404
    GET  /healthz               200 while serving (HEAD too)
    GET  /metrics               Prometheus text, when the stack provides an exporter
    GET  /health/deployments    each model's deployments and their circuits (JSON)

Every answer carries `x-request-id`, the headers middlewares left in
`ctx.response_headers` (rate-limit state, `x-cache`), and `x-proxy-overhead-ms`: the time
the proxy spent on the request minus the time it waited on the provider (for a stream,
up to its first chunk, when the headers leave). Every error, the server's own and the
pipeline's, is shaped as the door's API shapes errors, with the matching status.

`ProxyApp` is called as the engine's handler, `(request, responder)`, with the request body
already read within the server's limits. The engine cancels the handler as soon as the
client hangs up, which closes the response stream and so the upstream call: before the
first byte, mid-stream, and for answers that are not streamed. `asgi_app` (in `_asgi`)
adapts it to any ASGI server.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from time import perf_counter

import msgspec
import structlog
import trio

from http11 import Request as HTTPRequest
from pipeline import (
    Context,
    NotFoundError,
    Pipeline,
    ProxyError,
    Request,
    Router,
    ValidationError,
    clip_text,
)
from pipeline._stream import CLEANUP_TIMEOUT

from ._anthropic import COUNT_TOKENS, MESSAGES
from ._dialect import Dialect
from ._exchange import INTERNAL, SHUTTING_DOWN, Exchange, Responder
from ._openai import CHAT, EMBEDDINGS, TEXT
from ._responses import RESPONSES
from ._stack import DEPLOYMENTS_PATH, DeploymentsExporter, MetricsExporter, ModelsFor

__all__ = ["ProxyApp"]

log = structlog.get_logger("llm_proxy.server")

_encoder = msgspec.json.Encoder()
_HEALTHY = b'{"status":"ok"}'
_MODEL_PREFIX = "/v1/models/"
_FINAL_WRITE = 1.0
"""Seconds a handler cut by the shutdown may take to write its last words."""

Endpoint = Callable[[HTTPRequest, Exchange], Awaitable[None]]


class _Model(msgspec.Struct):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "llm-proxy"


class _ModelList(msgspec.Struct):
    data: list[_Model]
    object: str = "list"


def _for_caller(
    metrics: MetricsExporter | Callable[[], tuple[bytes, str]],
) -> MetricsExporter:
    """An exporter that takes the caller's context; one written without it still works."""
    try:
        takes_context = bool(inspect.signature(metrics).parameters)
    except (TypeError, ValueError):
        takes_context = True
    if takes_context:
        return metrics  # type: ignore[return-value]
    plain: Callable[[], tuple[bytes, str]] = metrics  # type: ignore[assignment]
    return lambda ctx: plain()


def _decode_headers(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in headers}


class ProxyApp:
    """The HTTP application in front of a pipeline, speaking OpenAI's API.

    Args:
      pipeline: what answers the model calls.
      models_for: the model names a caller may use, listed at `/v1/models`; by default
        the models of the pipeline's `Router`, if its provider is one.
      metrics: renders `/metrics` as (body, content type) for the caller's context (it may
        refuse the caller with a `ProxyError`); one that takes no argument works too.
        Without it `/metrics` is a 404.
      deployments: renders `/health/deployments` for the caller's context (it may refuse
        the caller with a `ProxyError`); without it that path is a 404.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        models_for: ModelsFor | None = None,
        metrics: MetricsExporter | Callable[[], tuple[bytes, str]] | None = None,
        deployments: DeploymentsExporter | None = None,
    ) -> None:
        self.pipeline = pipeline
        if models_for is None:
            provider = pipeline.provider
            names = provider.models if isinstance(provider, Router) else []

            def models_for(ctx: Context) -> list[str]:
                return names

        self.models_for = models_for
        self.metrics = _for_caller(metrics) if metrics is not None else None
        self.deployments = deployments
        self._routes: dict[str, dict[bytes, Endpoint]] = {
            "/v1/chat/completions": {b"POST": partial(self._model_call, CHAT)},
            "/v1/completions": {b"POST": partial(self._model_call, TEXT)},
            "/v1/messages": {b"POST": partial(self._model_call, MESSAGES)},
            "/v1/messages/count_tokens": {b"POST": partial(self._model_call, COUNT_TOKENS)},
            "/v1/responses": {b"POST": partial(self._model_call, RESPONSES)},
            "/v1/embeddings": {b"POST": partial(self._model_call, EMBEDDINGS)},
            "/v1/models": {b"GET": self._models},
            "/healthz": {b"GET": self._health, b"HEAD": self._health},
            "/metrics": {b"GET": self._metrics},
            DEPLOYMENTS_PATH: {b"GET": self._deployments},
        }
        self._model_routes: dict[bytes, Endpoint] = {b"GET": self._model}

    async def __call__(self, request: HTTPRequest, responder: Responder) -> None:
        """Answer one request (the engine's handler)."""
        exchange = Exchange(
            responder, Context(headers=_decode_headers(request.headers)), perf_counter(), CHAT
        )
        try:
            await self._route(request, exchange)
        except trio.Cancelled:
            if responder.shutting_down and not responder.started:
                with trio.CancelScope(shield=True) as final:
                    final.deadline = trio.current_time() + _FINAL_WRITE
                    log.warning("request_cut_by_shutdown", request_id=exchange.ctx.request_id)
                    await exchange.error(SHUTTING_DOWN)
            raise
        except Exception:
            # A bug, or a failure nothing on the way answers: the client still gets a 500
            # in the door's shape with its request id, if the answer has not started.
            log.exception("request_failed", request_id=exchange.ctx.request_id)
            if not responder.started:
                headers = [(b"x-request-id", exchange.ctx.request_id.encode())]
                await exchange.json(500, exchange.dialect.error(INTERNAL), headers)

    async def _route(self, request: HTTPRequest, exchange: Exchange) -> None:
        path = request.path
        methods = self._routes.get(path)
        if methods is None and path.startswith(_MODEL_PREFIX) and len(path) > len(_MODEL_PREFIX):
            methods = self._model_routes
        method = request.method.decode("latin-1")
        if methods is None:
            unknown = NotFoundError(f"Unknown path: {method} {clip_text(path)}", code="unknown_url")
            await exchange.reject(unknown)
            return
        endpoint = methods.get(request.method)
        if endpoint is None:
            allowed = ", ".join(name.decode() for name in methods)
            error = ValidationError(
                f"{method} is not allowed on {path}; use {allowed}.",
                code="method_not_allowed",
                status=405,
            )
            await exchange.reject(error, [(b"allow", allowed.encode())])
            return
        await endpoint(request, exchange)

    # -- model calls -----------------------------------------------------------------------

    async def _model_call(self, dialect: Dialect, request: HTTPRequest, exchange: Exchange) -> None:
        exchange.dialect = dialect
        exchange.ctx.door = dialect.name
        try:
            call = dialect.decode(request.body)
        except ProxyError as exc:
            await exchange.reject(exc)
            return
        if call.stream:
            await self._stream(call, exchange)
        else:
            await self._whole(call, exchange)

    async def _whole(self, call: Request, exchange: Exchange) -> None:
        """Answer with the whole response."""
        try:
            stream = await self.pipeline.handle(call, exchange.ctx)
            answer = await stream.collect()
            body = exchange.dialect.whole(answer, call)
        except Exception as exc:
            await exchange.failure(exc)
            return
        await exchange.json(200, body)

    async def _stream(self, call: Request, exchange: Exchange) -> None:
        """Answer with server-sent events."""
        try:
            stream = await self.pipeline.handle(call, exchange.ctx)
        except Exception as exc:
            await exchange.failure(exc)
            return
        async with stream:
            pull = stream.__anext__
            try:
                first = await pull()
            except StopAsyncIteration:
                first = None
            except Exception as exc:
                await exchange.failure(exc)
                return
            await exchange.start_events()
            encoder = exchange.dialect.events(call)
            encode = encoder.event
            try:
                if first is not None:
                    data = encode(first)
                    if data:
                        await exchange.event(data)
                    async for chunk in stream:
                        data = encode(chunk)
                        if data:
                            await exchange.event(data)
            except trio.Cancelled as cancelled:
                if exchange.responder.shutting_down:
                    with trio.CancelScope(shield=True) as final:
                        final.deadline = trio.current_time() + min(_FINAL_WRITE, CLEANUP_TIMEOUT)
                        await exchange.stream_failed(cancelled)
                raise
            except Exception as exc:
                await exchange.stream_failed(exc)
                return
        await exchange.end_events(encoder.done())

    # -- the rest --------------------------------------------------------------------------

    async def _models(self, request: HTTPRequest, exchange: Exchange) -> None:
        try:
            names = await self._model_names(exchange.ctx)
        except Exception as exc:
            await exchange.refuse(exc)
            return
        await exchange.json(200, _encoder.encode(_ModelList([_Model(name) for name in names])))

    async def _model(self, request: HTTPRequest, exchange: Exchange) -> None:
        name = request.path[len(_MODEL_PREFIX) :]
        try:
            if name not in await self._model_names(exchange.ctx):
                raise NotFoundError(f"The model `{clip_text(name)}` does not exist.", param="model")
        except Exception as exc:
            await exchange.refuse(exc)
            return
        await exchange.json(200, _encoder.encode(_Model(name)))

    async def _model_names(self, ctx: Context) -> Sequence[str]:
        names = self.models_for(ctx)
        if inspect.isawaitable(names):
            names = await names
        return names

    async def _health(self, request: HTTPRequest, exchange: Exchange) -> None:
        # HEAD gets the same head, with the length of the body it does not get.
        await exchange.json(200, _HEALTHY, [(b"x-request-id", exchange.ctx.request_id.encode())])

    async def _metrics(self, request: HTTPRequest, exchange: Exchange) -> None:
        if self.metrics is None:
            error = NotFoundError("Metrics are not enabled on this server.", code="unknown_url")
            await exchange.reject(error)
            return
        try:
            body, content_type = self.metrics(exchange.ctx)
        except Exception as exc:
            await exchange.refuse(exc)
            return
        await exchange.json(200, body, [], content_type=content_type.encode("latin-1"))

    async def _deployments(self, request: HTTPRequest, exchange: Exchange) -> None:
        if self.deployments is None:
            error = NotFoundError("This server lists no deployments.", code="unknown_url")
            await exchange.reject(error)
            return
        try:
            body = await self.deployments(exchange.ctx)
        except Exception as exc:
            await exchange.refuse(exc)
            return
        await exchange.json(200, body)
