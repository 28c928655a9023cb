"""Concurrency limiting: how many requests may be in flight, per key and over all keys.

A request takes one slot under its key and one under the global limit, in one atomic
store call, before it goes on; the slot is given back when its stream ends, however it
ends: exhausted, failed, closed early by the consumer, or cancelled. A request that finds
no free slot waits for one (at most `max_wait`, and never past `ctx.deadline`) or, with
`reject=True`, is turned away at once with 503 and `Retry-After` (load shedding).

Slots are leases in the store: if a proxy instance dies holding slots, they lapse
after `lease` seconds instead of being lost for good. A request whose deadline lies
further away than `lease` takes a lease that outlasts its deadline, so a live request
never loses its slot; without a deadline a request streaming longer than `lease` (600 s
by default, the default total timeout) may see its slot lapse and counted again. The Redis
store keeps each lease short in Redis and renews the ones it holds, so a slot it could not
confirm (a stalled Redis) or an instance that died frees its slots within seconds.

Waiting: the memory store wakes the longest waiter as soon as a slot is released; a
shared store may only poll, so a waiter also retries on a backoff from 50 ms to 1 s
(which also notices slots whose lease lapsed, and covers a wake-up that went to a waiter
that could not use it).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from functools import partial

import trio

from pipeline import (
    Context,
    Handler,
    Positive,
    PositiveInt,
    Request,
    ResponseStream,
    Section,
    StreamEnd,
    UnavailableError,
)

from ._auth import ANONYMOUS
from ._store import OnError, Store
from ._store_policy import ErrorPolicy

__all__ = ["ConcurrencyConfig", "ConcurrencyLimiter", "ConcurrencyStatistics"]


class ConcurrencyConfig(Section):
    """Limits on the requests in flight, per key and over all keys."""

    max_concurrency: PositiveInt | None = None
    """In-flight requests over all keys."""
    per_key: PositiveInt | None = None
    """Default in-flight requests per key (a key's max_concurrency wins)."""
    reject: bool = False
    """Answer 503 at once when full, instead of waiting for a slot."""
    max_wait: Positive = 30.0
    """Longest wait for a slot, in seconds, before answering 503."""


POLL_FIRST = 0.05
POLL_MAX = 1.0
LEASE_MARGIN = 1.0
"""Seconds a lease outlasts the request's deadline."""


class ConcurrencyLimiter:
    """Limit the requests in flight per key and over all keys.

    The per-key limit is the key's `max_concurrency` (`ctx.key`, an `ApiKey`), falling
    back to `per_key`; requests with no key id share the `anonymous` key's slots. A limit
    left None is not enforced. A request that had to wait notes the seconds it waited in
    `ctx.concurrency_wait`.

    Args:
      store: where the slots live.
      max_concurrency: requests in flight over all keys.
      per_key: default requests in flight per key.
      reject: when full, answer 503 at once instead of waiting.
      max_wait: longest wait for a slot, in seconds, before answering 503.
      lease: seconds a slot lasts if it is never given back (a dead instance).
      retry_after: the `Retry-After` of a 503, in seconds.
      on_error: when the store fails, admit the request (`fail_open`, logged) or answer
        503 (`fail_closed`).
    """

    def __init__(
        self,
        store: Store,
        *,
        max_concurrency: int | None = None,
        per_key: int | None = None,
        reject: bool = False,
        max_wait: float = 30.0,
        lease: float = 600.0,
        retry_after: float = 1.0,
        on_error: OnError = "fail_open",
    ) -> None:
        self.store = store
        self.max_concurrency = max_concurrency
        self.per_key = per_key
        self.reject = reject
        self.max_wait = max_wait
        self.lease = lease
        self.retry_after = retry_after
        self.policy = ErrorPolicy("concurrency limiter", on_error, retry_after=retry_after)
        self._held = 0
        self._waiting = 0

    @classmethod
    def from_config(
        cls,
        concurrency: ConcurrencyConfig,
        *,
        store: Store,
        on_error: OnError = "fail_open",
        lease: float = 600.0,
    ) -> ConcurrencyLimiter:
        """Build from the `[concurrency]` section.

        Pass the longest time a request may take as `lease` (the total timeout, if the
        deadline is set only inside this middleware).
        """
        return cls(
            store,
            max_concurrency=concurrency.max_concurrency,
            per_key=concurrency.per_key,
            reject=concurrency.reject,
            max_wait=concurrency.max_wait,
            lease=lease,
            on_error=on_error,
        )

    def _limits(self, ctx: Context) -> dict[str, int]:
        limits: dict[str, int] = {}
        key = ctx.key
        per_key = key.max_concurrency if key is not None else None
        per_key = per_key or self.per_key
        if per_key:
            limits[f"cc:key:{ctx.key_id or ANONYMOUS}"] = per_key
        if self.max_concurrency:
            limits["cc:global"] = self.max_concurrency
        return limits

    async def __call__(self, request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        limits = self._limits(ctx)
        if not limits:
            return await call_next(request, ctx)
        started = trio.current_time()
        try:
            pending = self.store.acquire_slots(limits, self._lease(ctx, started))
        except Exception as exc:
            self.policy.failed(exc, ctx, "acquire")
            return await call_next(request, ctx)
        # Awaited with the other admission checks (`Context.defer`): one write for all.
        ctx.defer(partial(self._taken, pending, limits, started, ctx))
        return await call_next(request, ctx)

    joins_admission = True
    """Leaves its first try for a slot pending for the rest of the admission."""

    def _lease(self, ctx: Context, now: float) -> float:
        if ctx.deadline is not None:
            return max(self.lease, ctx.deadline - now + LEASE_MARGIN)
        return self.lease

    async def _taken(
        self,
        pending: Awaitable[str | None],
        limits: dict[str, int],
        started: float,
        ctx: Context,
        apply: bool,
    ) -> None:
        """Await the first try; wait for a slot if need be (and allowed), or refuse."""
        slot = await self._acquire(limits, ctx, started, pending, apply)
        if slot is not None:
            # Given back when the request ends, however it ends (a later refusal too).
            ctx.at_end(_Held(self, list(limits), slot, ctx).on_end)

    async def _acquire(
        self,
        limits: dict[str, int],
        ctx: Context,
        started: float,
        pending: Awaitable[str | None],
        apply: bool,
    ) -> str | None:
        """Take a slot, waiting if allowed; None when the store failed and we fail open.

        `pending` is the first try, started already. Unless `apply`, only that try counts
        (its slot, if it took one, is given back at the end): nothing is refused.

        Raises:
          UnavailableError: no slot came free in time (or at once, with `reject`), or the
            store failed and the policy is `fail_closed`.
        """
        give_up = started + self.max_wait  # from when the first try started
        if ctx.deadline is not None:
            give_up = min(give_up, ctx.deadline)
        poll = POLL_FIRST
        now = started
        while True:
            try:
                slot = await pending
            except Exception as exc:
                if not apply:
                    self.policy.record(exc, None, "acquire")
                    return None
                self.policy.failed(exc, ctx, "acquire")
                return None
            self.policy.succeeded()
            if slot is not None or not apply:
                if now > started:
                    ctx.concurrency_wait = now - started
                return slot
            if self.reject:
                raise self._full(None)
            if now >= give_up:
                raise self._full(now - started)
            self._waiting += 1
            try:
                with trio.move_on_at(min(give_up, now + poll)):
                    await self.store.wait_for_slot(list(limits))
            except Exception as exc:
                self.policy.failed(exc, ctx, "wait")
                return None
            finally:
                self._waiting -= 1
            poll = min(poll * 2, POLL_MAX)
            now = trio.current_time()
            try:
                pending = self.store.acquire_slots(limits, self._lease(ctx, now))
            except Exception as exc:
                self.policy.failed(exc, ctx, "acquire")
                return None

    def _full(self, waited: float | None) -> UnavailableError:
        after = f" after waiting {waited:.1f} s" if waited is not None else ""
        return UnavailableError(
            f"Too many requests in flight{after}; try again shortly.",
            code="concurrency_limit_exceeded",
            retry_after=self.retry_after,
            headers={"retry-after": str(max(1, math.ceil(self.retry_after)))},
        )

    def statistics(self) -> ConcurrencyStatistics:
        """A snapshot of this process's requests through the limiter (the slots are the store's)."""
        return ConcurrencyStatistics(held=self._held, waiting=self._waiting)


@dataclass(frozen=True)
class ConcurrencyStatistics:
    """What `ConcurrencyLimiter.statistics()` returns.

    Attributes:
      held: slots taken for requests still in flight.
      waiting: requests waiting for a slot to come free.
    """

    held: int
    waiting: int


class _Held:
    """One request's slot, released exactly once however its stream ends."""

    __slots__ = ("_ctx", "_keys", "_limiter", "_slot")

    def __init__(
        self, limiter: ConcurrencyLimiter, keys: Sequence[str], slot: str, ctx: Context
    ) -> None:
        self._limiter = limiter
        self._keys = keys
        self._slot = slot
        self._ctx = ctx
        limiter._held += 1

    def on_end(self, end: StreamEnd) -> Awaitable[None] | None:
        self._limiter._held -= 1
        store = self._limiter.store
        return self._limiter.policy.quietly(
            self._ctx, "release", store.release_slots, self._keys, self._slot
        )
