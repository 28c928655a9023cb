"""What a middleware does when its store fails: the `on_error` policy.

A middleware that cannot reach its store follows its `on_error` policy (`ErrorPolicy`):
admit and warn (`fail_open`) or answer 503 (`fail_closed`), logging once per interval
and recovering by itself on the next call that succeeds.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TypeVarTuple

import structlog
import trio

from pipeline import ConfigError, Context, UnavailableError

from ._store import DONE, OnError

__all__ = ["ErrorPolicy"]

Ts = TypeVarTuple("Ts")


class ErrorPolicy:
    """What a middleware does when its store fails: admit (`fail_open`) or answer 503.

    Either way the failure is logged (a warning, at most once per `log_interval` with the
    count of failures in between), noted in `ctx.store_errors` (middleware name ->
    policy) for the access log and metrics, and counted in `errors`. The first success
    afterwards logs the recovery.

    Args:
      middleware: how logs and the 503 name the middleware.
      on_error: the policy.
      log_interval: seconds between two warnings while the store keeps failing.
      retry_after: the `retry_after` of the 503.
    """

    def __init__(
        self,
        middleware: str,
        on_error: OnError = "fail_open",
        *,
        log_interval: float = 60.0,
        retry_after: float = 1.0,
    ) -> None:
        if on_error not in ("fail_open", "fail_closed"):
            raise ConfigError(f"on_error must be `fail_open` or `fail_closed`, not {on_error!r}")
        self.middleware = middleware
        self.on_error = on_error
        self.log_interval = log_interval
        self.retry_after = retry_after
        self.errors = 0
        self.failing = False
        self._logged_at = -math.inf
        self._unlogged = 0
        self._warned = False
        # A logger of its own, not the module's: a logger keeps the configuration it was
        # first used under, and a module-wide one would keep the first stack's (or test's).
        self._log = structlog.get_logger("llm_proxy.store")

    def failed(self, error: Exception, ctx: Context, operation: str) -> None:
        """Record a store failure before the answer; return to admit the request, or raise.

        Raises:
          UnavailableError: when the policy is `fail_closed`.
        """
        self.record(error, ctx, operation)
        if self.on_error == "fail_closed":
            raise UnavailableError(
                f"The {self.middleware} cannot reach its state store; try again shortly.",
                retry_after=self.retry_after,
            ) from error

    def record(self, error: Exception, ctx: Context | None, operation: str) -> None:
        """Record a store failure that cannot change the answer (a settlement, a write)."""
        self.errors += 1
        self.failing = True
        if ctx is not None:
            ctx.store_errors[self.middleware] = self.on_error
        now = trio.current_time()
        if now - self._logged_at >= self.log_interval:
            self._log.warning(
                "store_error",
                middleware=self.middleware,
                operation=operation,
                policy=self.on_error,
                error=f"{type(error).__name__}: {error}",
                failures_since_last_log=self._unlogged,
            )
            self._logged_at = now
            self._unlogged = 0
            self._warned = True
        else:
            self._unlogged += 1
        # Every failure at debug, with its request (the warning above is rate-limited).
        self._log.debug(
            "store_call_failed",
            request_id=ctx.request_id if ctx is not None else None,
            middleware=self.middleware,
            operation=operation,
            policy=self.on_error,
            error=type(error).__name__,
        )

    def quietly(
        self, ctx: Context, operation: str, call: Callable[[*Ts], Awaitable[object]], *args: *Ts
    ) -> Awaitable[None] | None:
        """Start a store call that gives something back or writes an answer down.

        Its failure cannot change the answer any more, so it is only recorded (`record`).
        The call is made at once and the awaitable returned waits for its answer: an end
        hook (`Context.at_end`) that starts several calls before waiting lets a networked
        store send them together. None when there is nothing to wait for: the call failed
        at once, or the store did the work when called (it returned `DONE`).
        """
        try:
            pending = call(*args)
        except Exception as exc:
            self.record(exc, ctx, operation)
            return None
        if pending is DONE:
            return None
        return self._answer(pending, ctx, operation)

    async def _answer(self, pending: Awaitable[object], ctx: Context, operation: str) -> None:
        try:
            await pending
        except Exception as exc:
            self.record(exc, ctx, operation)

    def succeeded(self) -> None:
        """Record a successful store call (cheap when nothing had failed).

        The recovery is logged only after a logged warning, so a flapping store still
        logs at most twice per interval.
        """
        if self.failing:
            self.failing = False
            if self._warned:
                self._warned = False
                self._log.info("store_recovered", middleware=self.middleware, errors=self.errors)
