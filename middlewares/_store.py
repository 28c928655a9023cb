"""The shared-state store under every stateful middleware, and its in-memory default.

Rate limits, concurrency slots and the response cache keep their state in a `Store`. The
embedded `MemoryStore` keeps it in this process; a Redis store (several proxy instances,
one Redis) implements the same protocol with one Lua script per operation. So that the
second is possible without changing a middleware, the protocol follows four rules:

- Every operation is one atomic call: a check and the change it decides (reserve
  several limits, take a slot under several keys, take a lock) never spans two calls, so
  two instances cannot both see "one left" and both take it.
- Times come from the store's clock, never from the caller: the memory store reads
  trio's clock (tests run on `autojump_clock`); a Redis script reads Redis's `TIME`, the
  one clock all instances share. Results are durations (seconds to wait, seconds until
  reset), which mean the same on every instance.
- Keys are namespaced by the middlewares (`rl:`, `cc:`, `cache:`, `lock:`, `cb:`); a Redis store
  adds its own prefix in front, so several proxies may share one Redis (on a Redis
  Cluster the keys of one call must share a hash slot: a `{tag}` in the prefix).
- Cached values are bytes; the store neither decodes nor inspects them.
- A call that changes state (reserve, settle, take or give back a slot, write, lock,
  unlock) runs to its end even if the caller is cancelled meanwhile, so the caller always
  learns what it holds and gives it back on its way out: a networked store shields its
  I/O (bounded by its own timeout); the memory store never yields inside such a call.
  Reads and waits (`cache_get`, `wait_for_slot`) may be cancelled.

Rate limits use a leaky bucket kept as a meter (the continuous form of GCRA): a bucket
holds `level`, the units used, and `updated`, when it was last written. It drains at
`limit / window` units per second, so a full bucket is empty again after one window. A
reservation of `amount` is granted when `drained_level + amount <= limit`, and then
`level = drained_level + amount`. Two numbers per key, no timestamps per request, exact
under any concurrency (the check and the charge are one step), and integer amounts at
one instant add up exactly, so 10 of 100 simultaneous requests against a limit of 10 are
admitted, not 9 or 11. Settling adds a signed correction; the level may exceed the limit
(real usage above the estimate), which only delays the next grant.

Circuit breakers (one per deployment, `cb:` keys) keep the failure times within their
window, when the circuit's cooldown ends, and the half-open probe's token and lease. A
circuit is *closed* (no cooldown), *open* (cooling until its cooldown ends) or *half-open*
(the cooldown is over; the next admitted request is the one probe that decides). `admit`
checks a circuit and reserves rate-limit buckets in one step; `record` writes an outcome.

A middleware that cannot reach its store follows its `on_error` policy (`ErrorPolicy`):
admit and warn (`fail_open`) or answer 503 (`fail_closed`), logging once per interval
and recovering by itself on the next call that succeeds.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVarTuple

import msgspec
import structlog
import trio

from pipeline import (
    ConfigError,
    Context,
    Positive,
    Section,
    UnavailableError,
)

__all__ = [
    "Admission",
    "Bucket",
    "BucketState",
    "CircuitChange",
    "CircuitPolicy",
    "CircuitState",
    "MemoryStore",
    "MemoryStoreStatistics",
    "Reservation",
    "Store",
    "StoreConfig",
    "StoreError",
]


class StoreConfig(Section):
    """Where the stateful middlewares keep their state: this process, or a shared Redis."""

    backend: Literal["memory", "redis"] = "memory"
    """`memory`: per process; `redis`: shared by every instance that names the same Redis."""
    url: str = "redis://127.0.0.1:6379/0"
    """The Redis URL (`redis://`, `rediss://`, cluster and sentinel forms), for `redis`."""
    prefix: str = "llm-proxy:"
    """Put in front of every Redis key, so several proxies can share one Redis."""
    on_error: Literal["fail_open", "fail_closed"] = "fail_open"
    """When the store cannot answer: admit the request (`fail_open`) or answer 503."""
    timeout: Positive = 1.0
    """Seconds each store call may take before it counts as failed."""


OnError = Literal["fail_open", "fail_closed"]

Ts = TypeVarTuple("Ts")
log = structlog.get_logger("llm_proxy.store")


class StoreError(Exception):
    """The store could not answer: unreachable, timed out, or a script failed.

    Its message is logged, so it must never contain a secret (a password in a URL).
    """


class Bucket(msgspec.Struct, frozen=True):
    """One limit to check and charge: at most `limit` units per `window` seconds.

    Attributes:
      key: the bucket's name (`rl:req:key:alice`).
      limit: units per window (requests or tokens).
      window: the window in seconds; the bucket drains at `limit / window` per second.
      amount: units to reserve; for `Store.settle`, a signed correction.
    """

    key: str
    limit: int
    window: float
    amount: int


class BucketState(msgspec.Struct, frozen=True):
    """A bucket as the `x-ratelimit-*` headers describe it.

    Attributes:
      limit: units per window.
      remaining: whole units that could be reserved now (never negative).
      reset: seconds until the bucket is back to its full limit.
    """

    limit: int
    remaining: int
    reset: float


class Reservation(msgspec.Struct, frozen=True):
    """The answer to `Store.reserve`: granted for all buckets, or for none.

    Attributes:
      granted: whether every amount was reserved.
      retry_after: when denied, seconds until every bucket could take its amount
        (a hint: other requests may take the room first); 0 when granted.
      states: each bucket's state after the call, in the order asked.
    """

    granted: bool
    retry_after: float
    states: tuple[BucketState, ...]


CircuitStateName = Literal["closed", "open", "half_open"]


class CircuitPolicy(msgspec.Struct, frozen=True):
    """When a deployment's circuit opens, and for how long it rests.

    Attributes:
      failures: failures within `window` that open the circuit.
      window: seconds a failure counts for.
      cooldown: seconds an open circuit rests before its half-open probe.
    """

    failures: int
    window: float
    cooldown: float


class Admission(msgspec.Struct, frozen=True):
    """The answer to `Store.admit`.

    Attributes:
      admitted: whether the deployment takes the request.
      probe: when admitted as the half-open probe, the probe's token for `record` or
        `release_probe`; None otherwise.
      refused: why not, when not admitted: `open` (cooling), `probing` (another request
        is the probe), `rate_limited` (a bucket lacks room).
      retry_after: when refused, seconds until it may take a request again (a hint).
    """

    admitted: bool
    probe: str | None = None
    refused: Literal["open", "probing", "rate_limited"] | None = None
    retry_after: float = 0.0


class CircuitState(msgspec.Struct, frozen=True):
    """One circuit as the deployments endpoint shows it.

    Attributes:
      state: `closed`, `open` or `half_open`.
      failures: failures within the window.
      retry_after: seconds of cooldown left (0 unless open).
      probing: whether a half-open probe is out.
    """

    state: CircuitStateName
    failures: int = 0
    retry_after: float = 0.0
    probing: bool = False


class CircuitChange(msgspec.Struct, frozen=True):
    """What `Store.record` did: the circuit's state before and after, and the cooldown left."""

    before: CircuitStateName
    after: CircuitStateName
    retry_after: float = 0.0


class Store(Protocol):
    """Where the stateful middlewares keep their state; every method is one atomic step.

    Any method may raise (`StoreError` or whatever the backend raises); the middlewares
    apply their `on_error` policy. Methods that change state finish even when the caller
    is cancelled (see the module's notes). The store belongs to whoever created it:
    middlewares never close it.
    """

    async def reserve(self, buckets: Sequence[Bucket]) -> Reservation:
        """Reserve every bucket's amount, or none of them if any bucket lacks room."""
        ...

    async def settle(self, buckets: Sequence[Bucket]) -> None:
        """Add each bucket's signed amount to its level (a charge or a refund).

        A refund never takes a level below zero; a charge may take it above the limit.
        """
        ...

    async def acquire_slots(self, limits: Mapping[str, int], lease: float) -> str | None:
        """Take one slot under every key (key -> most slots), or none if any key is full.

        Slots expire `lease` seconds after they are taken, so an instance that dies cannot
        hold them forever.

        Returns:
          the slot's id (the same under every key), or None when a key is full.
        """
        ...

    async def release_slots(self, keys: Sequence[str], slot: str) -> None:
        """Give back the slot under each key; a slot already gone is ignored."""
        ...

    async def wait_for_slot(self, keys: Sequence[str]) -> None:
        """Return when a slot under one of `keys` may have come free.

        It may return early; the caller tries `acquire_slots` again either way, and bounds
        the wait with a cancel scope (a slot whose lease lapsed frees no waiter). The
        memory store wakes the waiter when a slot is released; a networked store may
        simply sleep for a short poll interval.
        """
        ...

    async def cache_get(self, key: str) -> bytes | None:
        """The value stored under `key`, or None if there is none or it expired."""
        ...

    async def cache_set(self, key: str, value: bytes, ttl: float) -> None:
        """Store `value` under `key` for `ttl` seconds, evicting others to stay in bounds."""
        ...

    async def try_lock(self, key: str, ttl: float) -> str | None:
        """Take the lock `key` for at most `ttl` seconds.

        Returns:
          a token for `unlock`, or None when someone else holds the lock.
        """
        ...

    async def unlock(self, key: str, token: str) -> None:
        """Release the lock if `token` still holds it (not if it expired and was retaken)."""
        ...

    async def admit(self, circuit: str, buckets: Sequence[Bucket], probe_lease: float) -> Admission:
        """Let a request through the circuit `circuit` and reserve `buckets`, or neither.

        A closed circuit admits; an open one refuses until its cooldown ends; a half-open
        one admits one request as its probe (held for at most `probe_lease` seconds) and
        refuses the others meanwhile. Then every bucket's amount is reserved; if one lacks
        room nothing is taken (a probe taken is given back) and the answer is
        `rate_limited`.
        """
        ...

    async def record(
        self,
        circuit: str,
        ok: bool,
        policy: CircuitPolicy,
        *,
        probe: str | None = None,
        cool_for: float | None = None,
        closes: bool = False,
    ) -> CircuitChange:
        """Write one outcome of a request through the circuit.

        A failure counts within `policy.window`; `policy.failures` of them open the circuit
        for `policy.cooldown` seconds. A failed probe opens it again. `cool_for` (an upstream's
        `Retry-After`) opens it at once for that long, or longer than it already rests.
        A successful probe closes it, and so does any success with `closes` (an active
        health check); another success changes nothing. The probe, if `probe` holds it, is
        given back.
        """
        ...

    async def release_probe(self, circuit: str, probe: str) -> None:
        """Give back a probe without a verdict (its request was cancelled)."""
        ...

    async def circuit_states(self, circuits: Sequence[str]) -> list[CircuitState]:
        """Each circuit's state, in the order asked (unknown ones are closed)."""
        ...


def bucket_state(bucket: Bucket, level: float) -> BucketState:
    """What the headers say of `bucket` when its level is `level` (shared by every store)."""
    remaining = max(0, math.floor(bucket.limit - level))
    return BucketState(bucket.limit, remaining, level * bucket.window / bucket.limit)


class _Meter:
    """A bucket's level at a time, and the rate (units per second) it drains at."""

    __slots__ = ("level", "rate", "updated")

    def __init__(self, level: float, updated: float, rate: float) -> None:
        self.level = level
        self.updated = updated
        self.rate = rate

    def at(self, now: float) -> float:
        return max(0.0, self.level - (now - self.updated) * self.rate)


class _Circuit:
    """One deployment's circuit: recent failure times, when its cooldown ends, its probe."""

    __slots__ = ("failures", "open_until", "probe", "probe_expires", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self.failures: list[float] = []
        self.open_until: float | None = None
        self.probe: str | None = None
        self.probe_expires = 0.0


def _left(state: _Circuit | None, now: float) -> float:
    """Seconds of cooldown left (0 when the circuit is not open)."""
    if state is None or state.open_until is None:
        return 0.0
    return max(0.0, state.open_until - now)


class MemoryStore:
    """The embedded store: state in this process's memory, on trio's clock.

    Limits and the cache then count per process: with several workers or instances each
    one enforces its own limits (use a shared store for one limit over all of them).
    Expired state is swept every few thousand operations, so memory stays bounded by the
    keys in use.

    Args:
      cache_max_entries: most cache entries kept; the least recently used go first.
      cache_max_bytes: most bytes of cached values kept; a larger value is not stored.
      clock: where times come from (default `trio.current_time`); tests may pass their own.
    """

    SWEEP_EVERY = 4096

    def __init__(
        self,
        *,
        cache_max_entries: int = 10_000,
        cache_max_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.cache_max_entries = cache_max_entries
        self.cache_max_bytes = cache_max_bytes
        self._clock = clock or trio.current_time
        self._meters: dict[str, _Meter] = {}
        self._slots: dict[str, dict[str, float]] = {}
        # Per key, the waiters in arrival order (a dict is an ordered set).
        self._slot_waiters: dict[str, dict[trio.Event, None]] = {}
        self._cache: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._cache_bytes = 0
        self._locks: dict[str, tuple[str, float]] = {}
        self._circuits: dict[str, _Circuit] = {}
        self._ids = itertools.count(1)
        self._ops = 0

    def __repr__(self) -> str:
        return (
            f"MemoryStore(buckets={len(self._meters)}, slot_keys={len(self._slots)}, "
            f"cache_entries={len(self._cache)}, cache_bytes={self._cache_bytes})"
        )

    # -- rate limits -----------------------------------------------------------------------

    def _drained(self, bucket: Bucket, now: float) -> float:
        meter = self._meters.get(bucket.key)
        if meter is None:
            return 0.0
        return max(0.0, meter.level - (now - meter.updated) * bucket.limit / bucket.window)

    def _write(self, bucket: Bucket, level: float, now: float) -> None:
        self._meters[bucket.key] = _Meter(level, now, bucket.limit / bucket.window)

    async def reserve(self, buckets: Sequence[Bucket]) -> Reservation:
        now = self._clock()
        self._tick(now)
        levels = [self._drained(b, now) for b in buckets]
        wait = 0.0
        for bucket, level in zip(buckets, levels, strict=True):
            excess = level + bucket.amount - bucket.limit
            if excess > 0:
                wait = max(wait, excess * bucket.window / bucket.limit)
        if wait > 0:
            states = tuple(bucket_state(b, lv) for b, lv in zip(buckets, levels, strict=True))
            return Reservation(False, wait, states)
        granted = []
        for bucket, level in zip(buckets, levels, strict=True):
            level += bucket.amount
            self._write(bucket, level, now)
            granted.append(bucket_state(bucket, level))
        return Reservation(True, 0.0, tuple(granted))

    async def settle(self, buckets: Sequence[Bucket]) -> None:
        now = self._clock()
        for bucket in buckets:
            self._write(bucket, max(0.0, self._drained(bucket, now) + bucket.amount), now)

    # -- concurrency slots -----------------------------------------------------------------

    def _held(self, key: str, limit: int, now: float) -> dict[str, float]:
        """The live slots under `key`; lapsed leases are looked for only when it seems full."""
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = {}
        elif len(slots) >= limit:
            for slot in [s for s, expires in slots.items() if expires <= now]:
                del slots[slot]
        return slots

    async def acquire_slots(self, limits: Mapping[str, int], lease: float) -> str | None:
        now = self._clock()
        self._tick(now)
        held = [(self._held(key, limit, now), limit) for key, limit in limits.items()]
        if any(len(slots) >= limit for slots, limit in held):
            return None
        slot = f"{next(self._ids):x}"
        for slots, _ in held:
            slots[slot] = now + lease
        return slot

    async def release_slots(self, keys: Sequence[str], slot: str) -> None:
        for key in keys:
            slots = self._slots.get(key)
            if slots is not None and slots.pop(slot, None) is not None and not slots:
                del self._slots[key]
            # One slot came free: wake the longest waiter not woken yet, not all of them
            # (which would cost every waiter an attempt per release). A woken waiter that
            # still finds no room (another of its keys is full) retries on its own poll.
            for event in self._slot_waiters.get(key, ()):
                if not event.is_set():
                    event.set()
                    break

    async def wait_for_slot(self, keys: Sequence[str]) -> None:
        event = trio.Event()
        for key in keys:
            self._slot_waiters.setdefault(key, {})[event] = None
        try:
            await event.wait()
        finally:
            for key in keys:
                waiters = self._slot_waiters.get(key)
                if waiters is not None:
                    waiters.pop(event, None)
                    if not waiters:
                        del self._slot_waiters[key]

    # -- cache -----------------------------------------------------------------------------

    def _cache_drop(self, key: str) -> None:
        entry = self._cache.pop(key, None)
        if entry is not None:
            self._cache_bytes -= len(entry[0])

    async def cache_get(self, key: str) -> bytes | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            self._cache_drop(key)
            return None
        self._cache.move_to_end(key)
        return entry[0]

    async def cache_set(self, key: str, value: bytes, ttl: float) -> None:
        now = self._clock()
        self._tick(now)
        self._cache_drop(key)
        if len(value) > self.cache_max_bytes:
            return
        self._cache[key] = (value, now + ttl)
        self._cache_bytes += len(value)
        while len(self._cache) > self.cache_max_entries or self._cache_bytes > self.cache_max_bytes:
            self._cache_drop(next(iter(self._cache)))

    # -- locks -----------------------------------------------------------------------------

    async def try_lock(self, key: str, ttl: float) -> str | None:
        now = self._clock()
        self._tick(now)
        held = self._locks.get(key)
        if held is not None and held[1] > now:
            return None
        token = f"{next(self._ids):x}"
        self._locks[key] = (token, now + ttl)
        return token

    async def unlock(self, key: str, token: str) -> None:
        held = self._locks.get(key)
        if held is not None and held[0] == token:
            del self._locks[key]

    # -- circuit breakers ------------------------------------------------------------------

    def _circuit_state(self, circuit: _Circuit | None, now: float) -> CircuitStateName:
        if circuit is None or circuit.open_until is None:
            return "closed"
        return "open" if circuit.open_until > now else "half_open"

    async def admit(self, circuit: str, buckets: Sequence[Bucket], probe_lease: float) -> Admission:
        now = self._clock()
        self._tick(now)
        state = self._circuits.get(circuit)
        probe = None
        if state is not None and state.open_until is not None:
            if state.open_until > now:
                return Admission(False, refused="open", retry_after=state.open_until - now)
            if state.probe is not None and state.probe_expires > now:
                return Admission(False, refused="probing", retry_after=state.probe_expires - now)
            probe = f"{next(self._ids):x}"
            state.probe, state.probe_expires = probe, now + probe_lease
        if buckets:
            reservation = await self.reserve(buckets)
            if not reservation.granted:
                if probe is not None and state is not None:
                    state.probe = None
                return Admission(False, refused="rate_limited", retry_after=reservation.retry_after)
        return Admission(True, probe=probe)

    async def record(
        self,
        circuit: str,
        ok: bool,
        policy: CircuitPolicy,
        *,
        probe: str | None = None,
        cool_for: float | None = None,
        closes: bool = False,
    ) -> CircuitChange:
        now = self._clock()
        self._tick(now)
        state = self._circuits.get(circuit)
        before = self._circuit_state(state, now)
        probed = state is not None and probe is not None and state.probe == probe
        if state is not None and probed:
            state.probe = None
        if ok:
            if state is not None and (probed or closes):
                del self._circuits[circuit]
                return CircuitChange(before, "closed")
            return CircuitChange(before, before, _left(state, now))
        if state is None:
            state = self._circuits[circuit] = _Circuit(policy.window)
        state.window = policy.window
        state.failures = [t for t in state.failures if t > now - policy.window]
        state.failures.append(now)
        rest = None
        if probed or (before == "closed" and len(state.failures) >= policy.failures):
            rest = policy.cooldown
        if cool_for is not None:
            rest = max(rest or 0.0, cool_for)
        if rest is not None:
            until = now + rest
            if state.open_until is None or state.open_until <= now or until > state.open_until:
                state.open_until = until
            state.failures = []
        after = self._circuit_state(state, now)
        return CircuitChange(before, after, _left(state, now))

    async def release_probe(self, circuit: str, probe: str) -> None:
        state = self._circuits.get(circuit)
        if state is not None and state.probe == probe:
            state.probe = None

    async def circuit_states(self, circuits: Sequence[str]) -> list[CircuitState]:
        now = self._clock()
        states = []
        for key in circuits:
            state = self._circuits.get(key)
            if state is None:
                states.append(CircuitState("closed"))
                continue
            failures = sum(1 for t in state.failures if t > now - state.window)
            states.append(
                CircuitState(
                    self._circuit_state(state, now),
                    failures,
                    _left(state, now),
                    state.probe is not None and state.probe_expires > now,
                )
            )
        return states

    # -- housekeeping ----------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        self._ops += 1
        if self._ops >= self.SWEEP_EVERY:
            self._ops = 0
            self.sweep(now)

    def sweep(self, now: float | None = None) -> None:
        """Forget everything that has expired: drained buckets, lapsed slots, locks, entries.

        Runs by itself every `SWEEP_EVERY` operations; call it to free memory sooner.
        """
        if now is None:
            now = self._clock()
        for key in [k for k, meter in self._meters.items() if meter.at(now) <= 0]:
            del self._meters[key]
        for key in list(self._slots):
            if not self._held(key, 0, now):  # a limit of 0: every lapsed lease goes
                del self._slots[key]
        for key in [k for k, (_, expires) in self._locks.items() if expires <= now]:
            del self._locks[key]
        for key in [k for k, (_, expires) in self._cache.items() if expires <= now]:
            self._cache_drop(key)

    # -- statistics ------------------------------------------------------------------------

    def statistics(self) -> MemoryStoreStatistics:
        """A snapshot of what the store holds now (lapsed state counts until it is swept)."""
        now = self._clock()
        return MemoryStoreStatistics(
            levels={key: meter.at(now) for key, meter in self._meters.items()},
            slots={key: len(slots) for key, slots in self._slots.items()},
            slot_waiters={key: len(waiters) for key, waiters in self._slot_waiters.items()},
            locks=len(self._locks),
            cache_entries=len(self._cache),
            cache_bytes=self._cache_bytes,
        )


@dataclass(frozen=True)
class MemoryStoreStatistics:
    """What `MemoryStore.statistics()` returns.

    Attributes:
      levels: each rate-limit bucket's level (units used, drained to now), by key.
      slots: concurrency slots held, by key (a slot taken under two keys counts in both).
      slot_waiters: tasks waiting for a slot, by key.
      locks: locks held.
      cache_entries: entries in the cache.
      cache_bytes: bytes of cached values.
    """

    levels: Mapping[str, float]
    slots: Mapping[str, int]
    slot_waiters: Mapping[str, int]
    locks: int
    cache_entries: int
    cache_bytes: int


def wait_until(ctx: Context, max_wait: float) -> float:
    """The trio time a wait must end by: `max_wait` from now, and never past the deadline."""
    give_up = trio.current_time() + max_wait
    if ctx.deadline is not None:
        give_up = min(give_up, ctx.deadline)
    return give_up


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
            log.warning(
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

    async def quietly(
        self, ctx: Context, operation: str, call: Callable[[*Ts], Awaitable[object]], *args: *Ts
    ) -> None:
        """Run a store call that gives something back or writes an answer down.

        Its failure cannot change the answer any more, so it is only recorded (`record`).
        """
        try:
            await call(*args)
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
                log.info("store_recovered", middleware=self.middleware, errors=self.errors)
