"""Middleware composition: the chain is bound once, when the pipeline is built."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from time import perf_counter
from types import TracebackType
from typing import Protocol

import trio

from ._context import NOT_STARTED, Context, EndHook, Prepare
from ._provider import Provider, call_provider
from ._stream import CLEANUP_TIMEOUT, Outcome, ResponseStream, StreamEnd, _Observed
from ._types import ChatCompletion, Chunk, Request

__all__ = ["Handler", "Middleware", "Pipeline"]


class Handler(Protocol):
    """The rest of the chain, as a middleware sees it: request and context in, stream out."""

    def __call__(self, request: Request, ctx: Context, /) -> Awaitable[ResponseStream]: ...


class Middleware(Protocol):
    """One step of the chain.

    Any async callable `(request, ctx, call_next) -> ResponseStream` is a middleware: a plain
    `async def` or an object with an `async def __call__`. It may

    - change the request and pass it on: `await call_next(replaced_request, ctx)`;
    - answer without calling `call_next` (cache hit, rejection) by returning a stream or
      raising a `ProxyError`;
    - wrap the returned stream to watch or change chunks (`stream.observe`, `stream.map`).

    Per-request state belongs in local variables or the context, never on `self`: one
    middleware object serves every request at once. A middleware with an `aclose()` method
    is closed when the pipeline is.
    """

    def __call__(
        self, request: Request, ctx: Context, call_next: Handler, /
    ) -> Awaitable[ResponseStream]: ...


class _Tracked(ResponseStream):
    """Records the first chunk's time, the usage and the time spent waiting on the provider.

    The wait is measured around each pull from the provider's stream (two `perf_counter`
    calls, about 0.1 us), so the server can tell its own cost from the upstream's.
    """

    __slots__ = ("_ctx",)

    def __init__(self, inner: ResponseStream, ctx: Context) -> None:
        super().__init__(inner)
        self._ctx = ctx

    async def _next_chunk(self) -> Chunk:
        ctx = self._ctx
        started = perf_counter()
        try:
            chunk = await self._source.__anext__()
        finally:
            ctx.upstream_wait += perf_counter() - started
        if ctx.first_chunk_at is None:
            ctx.first_chunk_at = trio.current_time()
        if chunk.usage is not None:
            ctx.usage = chunk.usage
        return chunk


async def _run_ends(ctx: Context, end: StreamEnd) -> None:
    """Run the request's end hooks (`Context.at_end`), shielded, and forget them.

    Every hook runs even if one raises; the first error is raised afterwards. The end
    hooks are called first, then their awaitables awaited together, then each report
    hook in turn. Calling a hook never blocks; only awaiting a result runs in a shielded
    scope with its own deadline, and a request whose hooks are all synchronous (the usual
    case) pays for no scope.
    """
    ends = ctx._ends or []
    reports = ctx._reports
    ctx._ends = None
    if not ends and not reports:
        return
    ctx._reports = []
    error: BaseException | None = None
    pending: list[Awaitable[None]] = []
    for hook in reversed(ends):
        try:
            result = hook(end)
        except Exception as exc:
            error = error or exc
            continue
        if result is not None:
            pending.append(result)
    if pending:
        error = await _await_shielded(pending, error)
    for hook in reversed(reports):
        try:
            result = hook(end)
        except Exception as exc:
            error = error or exc
            continue
        if result is not None:
            error = await _await_shielded([result], error)
    if error is not None:
        raise error


async def _await_shielded(
    pending: list[Awaitable[None]], error: BaseException | None
) -> BaseException | None:
    """Await each of `pending` in a shielded scope; the first error, `error` if earlier."""
    with trio.CancelScope(shield=True, deadline=trio.current_time() + CLEANUP_TIMEOUT):
        for result in pending:
            try:
                await result
            except Exception as exc:
                error = error or exc
    return error


class _Watched(_Observed):
    """The one wrapper that tells a request's end hooks how its stream ended.

    Outermost, so it sees the stream as the client does: an error raised by any middleware
    on the way out, an early close, a cancellation. It reads and counts as `observe` does;
    only the end differs: the context's hooks run, shielded only when one has something
    to await.
    """

    __slots__ = ("_ctx",)

    def __init__(self, inner: ResponseStream, ctx: Context) -> None:
        super().__init__(inner, None, None)
        self._ctx = ctx

    async def _end(self, outcome: Outcome, error: BaseException | None) -> None:
        if self._ended:
            return
        self._ended = True
        if self._ctx._ends is not None:
            await _run_ends(self._ctx, StreamEnd(outcome, error, self._chunks))


def _bind(middleware: Middleware, call_next: Handler) -> Handler:
    async def handler(request: Request, ctx: Context) -> ResponseStream:
        return await middleware(request, ctx, call_next)

    return handler


def _joins_admission(middleware: object) -> bool:
    """Whether a middleware may leave admission checks pending (`Context.defer`)."""
    return getattr(middleware, "joins_admission", False) is True


def _admitting(call_next: Handler) -> Handler:
    """`call_next` once the admission checks left pending before it have passed."""

    async def handler(request: Request, ctx: Context) -> ResponseStream:
        if ctx._admission:
            await ctx.admitted()
        return await call_next(request, ctx)

    return handler


class Pipeline:
    """A provider behind a chain of middlewares.

    The first middleware listed sees the request first and the response last, like the
    layers of an onion::

        Pipeline(provider, [log, auth, cache])

        request  -> log -> auth -> cache -> provider
        response <- log <- auth <- cache <- provider

    So `log` measures everything (including requests `auth` rejects and hits `cache`
    serves), `auth` rejects before the cache is consulted, and `cache` stores what the
    provider returned. A chunk wrapper added by `cache` runs before one added by `log`.

    The chain is bound once, here; handling a request allocates nothing for the chain.

    A provider with a `prepare(request, ctx)` method (optional; the `Router` has one) is
    offered a place in the request's admission batch: see `Context.admitted`.

    Args:
      provider: what answers at the end of the chain (often a `Router` over several).
      middlewares: the chain, outermost first.
    """

    def __init__(self, provider: Provider, middlewares: Sequence[Middleware] = ()) -> None:
        self.provider = provider
        self.middlewares = tuple(middlewares)
        # A provider that may join the admission batch (`Context.admitted`).
        self._prepare: Prepare | None = getattr(provider, "prepare", None)

        async def terminal(request: Request, ctx: Context) -> ResponseStream:
            started = perf_counter()
            try:
                stream = await call_provider(provider, request, ctx)
            finally:
                ctx.upstream_wait += perf_counter() - started
            return _Tracked(stream, ctx)

        handler: Handler = terminal
        joins = False  # whether the handler built so far joins the admission
        for middleware in reversed(self.middlewares):
            # Checks a middleware leaves pending (`Context.defer`) are settled before the
            # first handler after it that does not join them: what it sees is admitted.
            joining = _joins_admission(middleware)
            handler = _bind(middleware, handler if joins or not joining else _admitting(handler))
            joins = joining
        self._handler = handler

    async def handle(self, request: Request, ctx: Context | None = None) -> ResponseStream:
        """Run the request through the chain and return the answer's stream.

        The caller owns the stream and must close it (`async with`, or `aclose()`).

        Raises:
          ProxyError: when a middleware or the provider rejects the request before the
            stream starts.
        """
        if ctx is None:
            ctx = Context()
        elif ctx.started == NOT_STARTED:
            ctx.started = trio.current_time()
        if ctx._ends is not None:
            # An outer pipeline (a fallback's route) watches this request already.
            return await self._handler(request, ctx)
        ends: list[EndHook] = []
        ctx._ends = ends
        if self._prepare is not None:
            ctx._prepare = (self._prepare, request)
        try:
            stream = await self._handler(request, ctx)
        except Exception as exc:
            if ctx._admission:
                with trio.CancelScope(shield=True):  # the store bounds each call
                    await ctx.abandon_admission()
            await _run_ends(ctx, StreamEnd(Outcome.ERROR, exc, 0))
            raise
        except BaseException as exc:
            if ctx._admission:
                with trio.CancelScope(shield=True):  # the store bounds each call
                    await ctx.abandon_admission()
            await _run_ends(ctx, StreamEnd(Outcome.CANCELLED, exc, 0))
            raise
        ctx._prepare = None
        if not ends and not ctx._reports:
            ctx._ends = None
            return stream
        return _Watched(stream, ctx)

    @asynccontextmanager
    async def stream(
        self, request: Request, ctx: Context | None = None
    ) -> AsyncIterator[ResponseStream]:
        """`async with pipeline.stream(request) as chunks:`; closes the stream on exit."""
        stream = await self.handle(request, ctx)
        try:
            yield stream
        finally:
            await stream.aclose()

    async def complete(self, request: Request, ctx: Context | None = None) -> ChatCompletion:
        """Run the request and assemble the whole answer."""
        stream = await self.handle(request, ctx)
        return await stream.collect()

    async def validate(self) -> None:
        """Validate the provider (credentials, reachability)."""
        await self.provider.validate()

    async def aclose(self) -> None:
        """Close the middlewares that hold resources, then the provider."""
        for middleware in self.middlewares:
            close = getattr(middleware, "aclose", None)
            if close is not None:
                result = close()
                if inspect.isawaitable(result):
                    await result
        await self.provider.aclose()

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
