"""Timeout: a total deadline, a time-to-first-token limit and an idle limit between chunks.

Each limit, when it passes, cancels the upstream call (the provider's stream is closed, so
its connection is released) and surfaces as a `GatewayTimeoutError` (504) whose message says
which limit passed. The total limit is the whole request's, counted from its arrival
(`ctx.started`), and it tightens `ctx.deadline` so providers and the retry middleware can see
it; the first-token and idle limits are per upstream attempt, so a retry gets a fresh window.
"""

from __future__ import annotations

import trio

from pipeline import (
    Chunk,
    Context,
    GatewayTimeoutError,
    Handler,
    Positive,
    Request,
    ResponseStream,
    Section,
    StreamLimits,
)

__all__ = ["Deadline", "Timeout", "TimeoutConfig"]


class TimeoutConfig(Section):
    """Time limits on each request; passing one cancels the upstream call and answers 504."""

    total: Positive | None = 600.0
    """Seconds a whole request may take, from its arrival, retries included."""
    first_token: Positive | None = 120.0
    """Seconds each attempt may take to produce its first chunk."""
    idle: Positive | None = 120.0
    """Seconds a stream may go quiet between two chunks."""


_INF = float("inf")


class Timeout:
    """Cut off upstream calls that take too long: in total, to the first token, or between chunks.

    Place it last, right before the provider, so that retry and fallback (outside it) see its
    `GatewayTimeoutError` before the first chunk and can try again.

    The first-token limit covers `call_next` too: a provider that blocks before it returns its
    stream is cut off just like one whose stream is slow to start. The idle limit is counted
    from the moment the consumer asks for the next chunk, so a slow client never trips it.

    The first-token and idle limits are offered to the provider in `ctx.stream_limits`; a
    provider that enforces them on its own reads (the HTTP providers) says so, and its
    stream is then returned as it is, without a cancel scope per chunk here.

    Args:
      total: seconds from the request's arrival until its answer must be complete; also
        tightens `ctx.deadline`. None: no total limit of its own (a `ctx.deadline` set by
        someone else is still enforced).
      first_token: seconds from the call until the upstream's first chunk. None: no limit.
      idle: seconds the upstream may take to produce each later chunk. None: no limit.
    """

    __slots__ = ("first_token", "idle", "total")

    def __init__(
        self,
        *,
        total: float | None = None,
        first_token: float | None = None,
        idle: float | None = None,
    ) -> None:
        self.total = total
        self.first_token = first_token
        self.idle = idle

    @classmethod
    def from_config(cls, config: TimeoutConfig) -> Timeout:
        """A timeout middleware with the limits of the `[timeouts]` section."""
        return cls(total=config.total, first_token=config.first_token, idle=config.idle)

    async def __call__(self, request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        if self.total is not None:
            _tighten_deadline(ctx, self.total)
        deadline = ctx.deadline if ctx.deadline is not None else _INF
        if self.first_token is None and self.idle is None and deadline == _INF:
            return await call_next(request, ctx)
        limits = _Limits(self, ctx, deadline)
        enclosed = min(limits.first, deadline)
        offered = ctx.stream_limits = StreamLimits(limits.first, self.idle, enclosed)
        try:
            with trio.CancelScope(deadline=enclosed) as scope:
                stream = await call_next(request, ctx)
        finally:
            # The offer is for this attempt only: a fallback route called directly later
            # must not find it.
            ctx.stream_limits = None
        if scope.cancelled_caught:
            raise limits.error(limits.first, first=True)
        if offered.enforced:
            # The provider bounds every read by these limits and `ctx.deadline` itself:
            # a second cancel scope per chunk would only double the cost.
            return stream
        return _TimedStream(stream, limits)


class Deadline:
    """Give the request its total deadline as soon as it arrives; enforce nothing itself.

    `Timeout` sits last in the chain so that each upstream attempt gets its own first-token
    and idle limits; but middlewares before it also wait (for a concurrency slot, for an
    identical request's cached answer), and those waits must end by the request's deadline
    too. Put this first in the chain: it sets `ctx.deadline` (or tightens one already set)
    and every wait, `Timeout` and the providers honour it.

    Args:
      total: seconds from the request's arrival (`ctx.started`) until its answer must be
        complete.
    """

    __slots__ = ("total",)

    def __init__(self, total: float) -> None:
        self.total = total

    async def __call__(self, request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        _tighten_deadline(ctx, self.total)
        return await call_next(request, ctx)


def _tighten_deadline(ctx: Context, total: float) -> None:
    """Make `ctx.deadline` at most `total` seconds after the request arrived."""
    own = ctx.started + total
    if ctx.deadline is None or own < ctx.deadline:
        ctx.deadline = own


class _Limits:
    """One request's limits, and the error to raise when one of them passes."""

    __slots__ = ("deadline", "first", "own_total", "timeout")

    def __init__(self, timeout: Timeout, ctx: Context, deadline: float) -> None:
        self.timeout = timeout
        self.deadline = deadline
        self.first = (
            trio.current_time() + timeout.first_token if timeout.first_token is not None else _INF
        )
        # Whether the deadline is this middleware's own total limit or a tighter one set by
        # someone else: the message names the limit that actually passed.
        self.own_total = timeout.total is not None and deadline == ctx.started + timeout.total

    def error(self, limit: float, *, first: bool) -> GatewayTimeoutError:
        """The error for a read that ran out of time.

        Args:
          limit: the read's own limit (first-token or idle), which passed if it came before
            the deadline.
          first: whether the read was for the first chunk.
        """
        if limit < self.deadline:
            if first:
                message = (
                    f"The upstream sent no first token within {self.timeout.first_token:g} s "
                    "(first-token timeout)."
                )
            else:
                message = f"The upstream sent no chunk for {self.timeout.idle:g} s (idle timeout)."
        elif self.own_total:
            message = f"The request did not finish within {self.timeout.total:g} s (total timeout)."
        else:
            message = "The request did not finish before its deadline."
        return GatewayTimeoutError(message)


class _TimedStream(ResponseStream):
    """Runs each read of the inner stream under the limit that applies to it.

    A class rather than an async generator: the cancel scope is opened and closed within one
    `__anext__`, never across a yield.
    """

    __slots__ = ("_limits", "_started")

    def __init__(self, inner: ResponseStream, limits: _Limits) -> None:
        super().__init__(inner)
        self._limits = limits
        self._started = False

    async def _next_chunk(self) -> Chunk:
        limits = self._limits
        first = not self._started
        if first:
            limit = limits.first
        elif limits.timeout.idle is not None:
            limit = trio.current_time() + limits.timeout.idle
        elif limits.deadline == _INF:
            # Only a first-token limit, and it is behind us: no scope to pay for per chunk.
            return await self._source.__anext__()
        else:
            limit = _INF
        with trio.CancelScope(deadline=min(limit, limits.deadline)) as scope:
            chunk = await self._source.__anext__()
        if scope.cancelled_caught:
            # Cancel the upstream call before telling the consumer: the connection goes now,
            # not whenever the consumer gets round to closing the stream.
            await self.aclose()
            raise limits.error(limit, first=first)
        self._started = True
        return chunk
