"""The in-memory store: the embedded default, state kept in this process.

Implements the `Store` protocol (see `_store` for its rules and the leaky-bucket meter it
keeps per rate-limit key) on trio's clock, so tests on `autojump_clock` see virtual time.
It never yields inside a call that changes state.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import trio

from ._store import (
    DONE,
    Admission,
    Bucket,
    CircuitChange,
    CircuitPolicy,
    CircuitState,
    CircuitStateName,
    Reservation,
    bucket_state,
)

__all__ = ["MemoryStore", "MemoryStoreStatistics"]


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
        meters = self._meters
        # One pass: each bucket's meter and drained level (rate-limit checks run on every
        # request, so this avoids a lookup and a new meter per bucket per call).
        found: list[tuple[Bucket, _Meter | None, float]] = []
        wait = 0.0
        for bucket in buckets:
            meter = meters.get(bucket.key)
            limit = bucket.limit
            level = (
                0.0
                if meter is None
                else max(0.0, meter.level - (now - meter.updated) * limit / bucket.window)
            )
            excess = level + bucket.amount - limit
            if excess > 0:
                wait = max(wait, excess * bucket.window / limit)
            found.append((bucket, meter, level))
        if wait > 0:
            return Reservation(False, wait, tuple(bucket_state(b, lv) for b, _, lv in found))
        granted = []
        for bucket, meter, level in found:
            level += bucket.amount
            if meter is None:
                meters[bucket.key] = _Meter(level, now, bucket.limit / bucket.window)
            else:
                meter.level, meter.updated, meter.rate = level, now, bucket.limit / bucket.window
            granted.append(bucket_state(bucket, level))
        return Reservation(True, 0.0, tuple(granted))

    def settle(self, buckets: Sequence[Bucket]) -> Awaitable[None]:
        now = self._clock()
        for bucket in buckets:
            self._write(bucket, max(0.0, self._drained(bucket, now) + bucket.amount), now)
        return DONE

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

    def release_slots(self, keys: Sequence[str], slot: str) -> Awaitable[None]:
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
        return DONE

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

    def cache_set(self, key: str, value: bytes, ttl: float) -> Awaitable[None]:
        now = self._clock()
        self._tick(now)
        self._cache_drop(key)
        if len(value) > self.cache_max_bytes:
            return DONE
        self._cache[key] = (value, now + ttl)
        self._cache_bytes += len(value)
        while len(self._cache) > self.cache_max_entries or self._cache_bytes > self.cache_max_bytes:
            self._cache_drop(next(iter(self._cache)))
        return DONE

    # -- locks -----------------------------------------------------------------------------

    async def cache_lookup(
        self, key: str, lock: str | None, ttl: float
    ) -> tuple[bytes | None, str | None]:
        # Through the two methods, so that a subclass that changes either changes this too.
        value = await self.cache_get(key)
        if value is not None or lock is None:
            return value, None
        return None, await self.try_lock(lock, ttl)

    async def try_lock(self, key: str, ttl: float) -> str | None:
        now = self._clock()
        self._tick(now)
        held = self._locks.get(key)
        if held is not None and held[1] > now:
            return None
        token = f"{next(self._ids):x}"
        self._locks[key] = (token, now + ttl)
        return token

    def unlock(self, key: str, token: str) -> Awaitable[None]:
        held = self._locks.get(key)
        if held is not None and held[0] == token:
            del self._locks[key]
        return DONE

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
