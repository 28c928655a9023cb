"""An upstream call in flight: the open response and the deadlines it must keep."""

from __future__ import annotations

import math

import http11
from pipeline import StreamLimits

__all__ = ["UpstreamCall"]


class UpstreamCall:
    """An upstream response whose status was fine, with the deadlines of its call.

    Attributes:
      response: the open response (its body not read yet); it holds a pool slot until it
        is read to its end or closed.
      deadline: trio time by which the call must be done: for a whole answer the earlier
        of the context's deadline and `timeout` seconds after the start, for a stream the
        context's deadline.
      first_deadline: trio time by which a stream's first chunk must be produced (the
        earlier of the context's deadline and `first_token_timeout` after the start).
      ctx_deadline: the context's deadline (infinite if none), which every read honours
        exactly.
      idle: seconds each read after the first chunk may take at most, when the timeout
        middleware asked for less than the provider's `timeout` (`ctx.stream_limits`).
      limits: the timeout middleware's offer (`ctx.stream_limits`) for a whole answer:
        once its body is read, nothing of the call waits any more, so the limits hold
        without the middleware timing each chunk (see `HTTPProvider.read_body`).
    """

    __slots__ = ("ctx_deadline", "deadline", "first_deadline", "idle", "limits", "response")

    def __init__(
        self,
        response: http11.Response,
        deadline: float,
        first_deadline: float,
        ctx_deadline: float = math.inf,
        idle: float | None = None,
        limits: StreamLimits | None = None,
    ) -> None:
        self.response = response
        self.deadline = deadline
        self.first_deadline = first_deadline
        self.ctx_deadline = ctx_deadline
        self.idle = idle
        self.limits = limits
