"""Retry: try a failed request again, but only while nothing has reached the client.

A retryable error (`ProxyError.retryable`) raised by the rest of the chain, or by the stream
before its first chunk, is retried after a backoff. The middleware waits for the first chunk
itself (`stream.peek()`), so a stream that breaks before it is retried too; once a chunk is
in hand the stream is handed on and a later failure passes through untouched: a client that
has seen part of an answer must never see another one spliced onto it.
"""

from __future__ import annotations

import random

import structlog
import trio

from pipeline import (
    Context,
    Handler,
    Positive,
    PositiveInt,
    ProxyError,
    Request,
    ResponseStream,
    Section,
)

__all__ = ["Retry", "RetryConfig"]


class RetryConfig(Section):
    """Retries of retryable errors before the first chunk, with backoff and full jitter."""

    max_attempts: PositiveInt = 3
    """Attempts in all, the first included; 1 turns retrying off."""
    base_delay: Positive = 0.5
    """The first backoff's ceiling, in seconds; it doubles with each retry."""
    max_delay: Positive = 8.0
    """The largest backoff ceiling, in seconds."""
    max_retry_after: Positive = 30.0
    """Longest `Retry-After` to honour; a longer one is not retried."""
    deadline: Positive | None = None
    """Seconds all attempts together may take."""


async def first_chunk(stream: ResponseStream) -> ResponseStream:
    """Wait for the stream's first chunk and return the stream, with that chunk still unread.

    Raises:
      Exception: whatever the stream raised before its first chunk; the stream is closed
        first, so the upstream call is cancelled and its connection released.
    """
    try:
        await stream.peek()
    except BaseException:
        await stream.aclose()
        raise
    return stream


def note_retried(ctx: Context, error: ProxyError) -> None:
    """Count one more retry or fallback in the context and keep the error that caused it."""
    ctx.retries += 1
    ctx.retried_errors.append(error)


class Retry:
    """Retry retryable errors before the first chunk, with exponential backoff and full jitter.

    The n-th retry (counting from 0) waits `uniform(0, min(max_delay, base_delay * 2**n))`
    seconds, or exactly the error's `retry_after` when it carries one. A `retry_after` longer
    than `max_retry_after` is not waited for: the error is raised at once, so the client can
    decide. No retry starts after `deadline` (counted from the first attempt) or after
    `ctx.deadline`; a retry that could not start before them is not made.

    Every retry adds one to `ctx.retries` and appends the error to
    `ctx.retried_errors`. When the failed attempt leaves another deployment of the model
    ready (`ctx.failover_ready`), the retry goes to it at once, without a backoff.
    Cancellation during a backoff leaves nothing open: the
    failed attempt's stream was closed before the wait began.

    At the `debug` log level each retry is logged (`retry`: the attempt that failed, the
    error's type and status, the upstream tried, the delay), and so is the reason a failed
    attempt was not retried (`retry_stop`).

    Args:
      max_attempts: attempts in all, the first included (1 disables retrying).
      base_delay: the first backoff's ceiling, in seconds; it doubles with each retry.
      max_delay: the largest backoff ceiling, in seconds.
      max_retry_after: the longest `retry_after` to honour, in seconds.
      deadline: seconds all attempts together may take, or None.
      rng: the source of jitter (pass a seeded `random.Random` in tests).
    """

    __slots__ = (
        "base_delay",
        "deadline",
        "log",
        "max_attempts",
        "max_delay",
        "max_retry_after",
        "rng",
    )

    def __init__(
        self,
        *,
        max_attempts: int = 3,
        base_delay: float = 0.5,
        max_delay: float = 8.0,
        max_retry_after: float = 30.0,
        deadline: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_retry_after = max_retry_after
        self.deadline = deadline
        self.rng = rng if rng is not None else random.Random()
        self.log = structlog.get_logger("llm_proxy.retry")

    @classmethod
    def from_config(cls, config: RetryConfig, *, rng: random.Random | None = None) -> Retry:
        """A retry middleware with the settings of the `[retry]` section."""
        return cls(
            max_attempts=config.max_attempts,
            base_delay=config.base_delay,
            max_delay=config.max_delay,
            max_retry_after=config.max_retry_after,
            deadline=config.deadline,
            rng=rng,
        )

    async def __call__(self, request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        deadline = trio.current_time() + self.deadline if self.deadline is not None else None
        attempt = 1
        while True:
            ctx.failover_ready = False
            try:
                return await first_chunk(await call_next(request, ctx))
            except ProxyError as exc:
                delay, reason = self._backoff(exc, attempt, deadline, ctx)
                if delay is None:
                    self.log.debug(
                        "retry_stop",
                        request_id=ctx.request_id,
                        attempt=attempt,
                        error=exc.type,
                        status=exc.status,
                        reason=reason,
                    )
                    raise
                note_retried(ctx, exc)
                self.log.debug(
                    "retry",
                    request_id=ctx.request_id,
                    attempt=attempt,
                    max_attempts=self.max_attempts,
                    error=exc.type,
                    status=exc.status,
                    provider=ctx.provider,
                    upstream_model=ctx.upstream_model,
                    retry_after=exc.retry_after,
                    delay=round(delay, 3),
                )
            attempt += 1
            await trio.sleep(delay)

    def _backoff(
        self, error: ProxyError, attempt: int, deadline: float | None, ctx: Context
    ) -> tuple[float, None] | tuple[None, str]:
        """(seconds to wait before the next attempt, None), or (None, why there is none)."""
        if not error.retryable:
            return None, "not retryable"
        if attempt >= self.max_attempts:
            return None, "attempts exhausted"
        if ctx.failover_ready:
            # Another deployment of the model can take the request now: no reason to wait.
            delay = 0.0
        elif error.retry_after is not None:
            if error.retry_after > self.max_retry_after:
                return None, "retry-after longer than max_retry_after"
            delay = error.retry_after
        else:
            ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
            delay = self.rng.uniform(0, ceiling)
        start = trio.current_time() + delay
        if (deadline is not None and start >= deadline) or (
            ctx.deadline is not None and start >= ctx.deadline
        ):
            return None, "deadline"
        return delay, None
