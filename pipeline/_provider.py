"""The provider boundary: one method to run a request, plus validate and close."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable

import msgspec

from ._context import Context
from ._errors import ConfigError, NotFoundError, ValidationError, clip_text
from ._stream import ResponseStream
from ._tokens import estimate_prompt_tokens
from ._types import API_NAMES, ChatCompletion, Request, Usage

__all__ = ["BaseProvider", "Provider", "Route", "Router", "call_provider"]


@runtime_checkable
class Provider(Protocol):
    """Something that turns a request into a stream of chunks: an upstream API, a mock.

    Attributes:
      name: how logs, metrics and errors name this provider.
      supports_streaming: False when the provider can only answer whole; the pipeline then
        asks it for a complete answer and streams that to clients who want a stream.

    A provider may also name, in `native_apis`, the request APIs (`Request.api`) it
    serves natively: it sends such a request's `native` body as the client sent it and
    answers with the upstream's own events (`Chunk.raw`). Every provider answers the chat
    shape of `messages` and `responses` calls; `call_provider` refuses an `embeddings` call
    to a provider without `"embeddings"` and estimates a `count_tokens` call for one
    without `"count_tokens"`.
    """

    name: str
    supports_streaming: bool

    async def execute(self, request: Request, ctx: Context) -> ResponseStream:
        """Send the request upstream and return the stream of its answer.

        Errors before the first chunk are raised from here (a `ProxyError`); errors after
        it are raised from the stream. The returned stream owns the upstream connection.
        """
        ...

    async def validate(self) -> None:
        """Check credentials and reachability; raise a `ProxyError` if they are wrong."""
        ...

    async def aclose(self) -> None:
        """Release pooled connections. Called once, when the pipeline shuts down."""
        ...


class BaseProvider:
    """Convenient base for providers: names itself, validates and closes as no-ops.

    Subclasses implement `execute`.
    """

    name: str = "provider"
    supports_streaming: bool = True
    native_apis: frozenset[str] = frozenset()

    async def execute(self, request: Request, ctx: Context) -> ResponseStream:
        raise NotImplementedError

    async def validate(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


async def call_provider(provider: Provider, request: Request, ctx: Context) -> ResponseStream:
    """Run `provider` on `request`, asking a non-streaming provider for a whole answer.

    The answer comes back as a stream either way: a whole answer is a stream of its chunks.
    A call of an API the provider does not serve natively (`native_apis`) gets its chat
    shape, unless the door could not translate all of it; a `count_tokens` call gets an
    estimate (`estimate_prompt_tokens`).

    Raises:
      ValidationError: an `embeddings` call to a provider that does not serve embeddings,
        or a call with parts that have no chat counterpart (naming the first) to a
        provider that does not serve its API natively.
    """
    api = request.api
    if api != "chat" and api not in getattr(provider, "native_apis", ()):
        if api == "embeddings":
            raise ValidationError(
                f"The model `{clip_text(request.model)}` is served by provider "
                f"`{provider.name}`, which does not serve embeddings.",
                param="model",
            )
        if api == "count_tokens":
            return _estimated_count(request)
        native = request.native
        if native is not None and native.untranslated:
            raise ValidationError(
                f"`{native.untranslated[0]}` cannot be translated for provider "
                f"`{provider.name}`, which does not speak this API natively.",
                param=native.untranslated[0],
            )
    if request.stream and not provider.supports_streaming:
        request = msgspec.structs.replace(request, stream=False, stream_options=None)
    return await provider.execute(request, ctx)


def _estimated_count(request: Request) -> ResponseStream:
    """The answer to a token count that no upstream counts: an estimate, costing nothing."""
    body = b'{"input_tokens":%d}' % estimate_prompt_tokens(request)
    answer = ChatCompletion("count", int(time.time()), request.model, [], Usage(), raw=body)
    return ResponseStream.from_response(answer)


class Route(msgspec.Struct, frozen=True):
    """Where a model name goes: which provider, and under which upstream model name."""

    provider: Provider
    upstream_model: str


class Router(BaseProvider):
    """A provider that dispatches on `request.model` to the provider configured for it.

    The request reaching the chosen provider carries the upstream model name; the context
    records which provider and upstream model were used.

    Args:
      routes: model name as clients send it -> route.
      providers: what `validate` and `aclose` cover, when the routes' providers are not
        the ones that hold connections (a route to the deployments of a model, which
        share providers with other models); by default, the routes' providers.

    Raises:
      NotFoundError: from `execute`, for a model that has no route.
    """

    name = "router"
    # Every API: each route's provider is called through `call_provider`, which decides.
    native_apis = frozenset(API_NAMES)

    def __init__(
        self, routes: Mapping[str, Route], *, providers: Iterable[Provider] | None = None
    ) -> None:
        if not routes:
            raise ConfigError("a router needs at least one model")
        self.routes = dict(routes)
        owned = providers if providers is not None else (r.provider for r in routes.values())
        self._providers = list({id(p): p for p in owned}.values())

    @property
    def models(self) -> list[str]:
        """The model names clients may ask for."""
        return list(self.routes)

    async def execute(self, request: Request, ctx: Context) -> ResponseStream:
        route = self.routes.get(request.model)
        if route is None:
            raise NotFoundError(
                f"The model `{clip_text(request.model)}` does not exist or is not served here.",
                param="model",
            )
        ctx.provider = route.provider.name
        ctx.upstream_model = route.upstream_model
        if route.upstream_model != request.model:
            request = msgspec.structs.replace(request, model=route.upstream_model)
        return await call_provider(route.provider, request, ctx)

    def prepare(self, request: Request, ctx: Context) -> None:
        """Let the model's provider join the request's admission batch, if it can.

        Called by the pipeline just before the first batch of admission checks is sent
        (`Context.admitted`); passes the call on to the route's provider when that has a
        `prepare` of its own (a model's `Deployments`, which starts its first attempt's
        admission there). Never raises for a model without a route: `execute` does.
        """
        route = self.routes.get(request.model)
        if route is None:
            return
        prepare = getattr(route.provider, "prepare", None)
        if prepare is not None:
            prepare(request, ctx)

    async def validate(self) -> None:
        for provider in self._providers:
            await provider.validate()

    async def aclose(self) -> None:
        for provider in self._providers:
            await provider.aclose()
