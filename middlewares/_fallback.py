"""Fallback: when a model fails before its first chunk, try the next alternative in line.

An alternative is either another model name, which goes down the rest of the chain (the
`Router` at its end resolves it), or an explicit `Route(provider, upstream_model)`, which is
called directly. Like retry, fallback acts only before the first chunk has reached the client
and only on errors another upstream might not have: retryable ones and timeouts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec
import structlog
import trio

from pipeline import (
    Context,
    GatewayTimeoutError,
    Handler,
    Pipeline,
    ProxyError,
    Request,
    ResponseStream,
    Route,
)

from ._deployments import COOLING
from ._retry import first_chunk, note_retried

__all__ = ["Fallback"]


def _falls_back(error: ProxyError) -> bool:
    """Whether another upstream might succeed where this one failed.

    Every deployment of a model cooling down is not worth a retry of that model, but
    another model may well answer.
    """
    return error.retryable or isinstance(error, GatewayTimeoutError) or error.code == COOLING


class Fallback:
    """Try alternative models or routes, in order, when a model fails before its first chunk.

    The requested model is tried first, through the rest of the chain. On a retryable error
    or a `GatewayTimeoutError` before the first chunk (the middleware waits for it with
    `stream.peek()`), the next alternative is tried, and so on; the last error is raised when
    every alternative failed. Errors that another upstream would repeat (400, 401, 403, ...)
    are raised at once, and so is any failure after the first chunk.

    A model-name alternative goes down the rest of the chain with `request.model` replaced,
    so the `Router` at the end resolves it and the middlewares after this one (a timeout) apply
    to it. A `Route` alternative is called directly, bypassing the rest of the chain (so no
    timeout applies to it unless its provider has its own); the context records its provider
    and upstream model, and its first-chunk time and usage, as the pipeline would. The
    middleware does not own the routes' providers: whoever built them closes them.

    Every alternative tried adds one to `ctx.retries` and appends the error that led to it to
    `ctx.retried_errors`; the one that served is named in `ctx.fallback`
    (a model name, or `provider/upstream_model` for a route). No alternative is tried once
    `ctx.deadline` has passed, and a model-name alternative the authenticated key may not
    use (`ctx.key`, an `ApiKey`) is skipped.

    At the `debug` log level each alternative tried is logged (`fallback`: the failed model
    or alternative, the error's type and status, the next alternative), and so are the
    alternatives skipped and the reason fallback stopped (`fallback_skip`, `fallback_stop`).

    Args:
      alternatives: model name as clients send it -> its alternatives, in order.
    """

    __slots__ = ("alternatives", "log")

    def __init__(self, alternatives: Mapping[str, Sequence[str | Route]]) -> None:
        self.alternatives: dict[str, tuple[_Alternative, ...]] = {
            model: tuple(_Alternative(target) for target in targets)
            for model, targets in alternatives.items()
            if targets
        }
        self.log = structlog.get_logger("llm_proxy.fallback")

    async def __call__(self, request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        alternatives = self.alternatives.get(request.model)
        if alternatives is None:
            return await call_next(request, ctx)
        try:
            return await first_chunk(await call_next(request, ctx))
        except ProxyError as exc:
            if not _falls_back(exc):
                self._stop(ctx, request.model, exc, "error another upstream would repeat")
                raise
            error = exc
        failed = request.model
        key = ctx.key
        for alternative in alternatives:
            if ctx.deadline is not None and trio.current_time() >= ctx.deadline:
                self._stop(ctx, failed, error, "deadline")
                raise error
            if (
                key is not None
                and alternative.pipeline is None
                and not key.allows(alternative.model)
            ):
                # The key may not use this model: falling back must not widen access.
                self.log.debug(
                    "fallback_skip",
                    request_id=ctx.request_id,
                    to=alternative.name,
                    reason="the key may not use this model",
                )
                continue
            note_retried(ctx, error)
            self.log.debug(
                "fallback",
                request_id=ctx.request_id,
                failed=failed,
                error=error.type,
                status=error.status,
                to=alternative.name,
            )
            try:
                stream = await first_chunk(await alternative.call(request, ctx, call_next))
            except ProxyError as exc:
                if not _falls_back(exc):
                    self._stop(ctx, alternative.name, exc, "error another upstream would repeat")
                    raise
                error = exc
                failed = alternative.name
                continue
            ctx.fallback = alternative.name
            return stream
        self._stop(ctx, failed, error, "alternatives exhausted")
        raise error

    def _stop(self, ctx: Context, failed: str, error: ProxyError, reason: str) -> None:
        self.log.debug(
            "fallback_stop",
            request_id=ctx.request_id,
            failed=failed,
            error=error.type,
            status=error.status,
            reason=reason,
        )


class _Alternative:
    """One alternative, bound once: a model name for the chain, or a route's own pipeline."""

    __slots__ = ("model", "name", "pipeline", "provider")

    def __init__(self, target: str | Route) -> None:
        self.pipeline: Pipeline | None
        self.provider: str | None
        if isinstance(target, Route):
            self.model = target.upstream_model
            self.provider = target.provider.name
            self.name = f"{self.provider}/{self.model}"
            # A pipeline without middlewares records first-chunk time and usage in the context,
            # exactly as the end of the main chain does.
            self.pipeline = Pipeline(target.provider)
        else:
            self.model = self.name = target
            self.provider = None
            self.pipeline = None

    async def call(self, request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        request = msgspec.structs.replace(request, model=self.model)
        if self.pipeline is None:
            return await call_next(request, ctx)
        ctx.provider = self.provider
        ctx.upstream_model = self.model
        return await self.pipeline.handle(request, ctx)
