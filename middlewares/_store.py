"""The shared-state store under every stateful middleware: its protocol and its types.

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
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Generator, Mapping, Sequence
from typing import Any, Final, Literal, Protocol

import msgspec
import trio

from pipeline import Context, Positive, Section

__all__ = [
    "Admission",
    "Bucket",
    "BucketState",
    "CircuitChange",
    "CircuitPolicy",
    "CircuitState",
    "CircuitStateName",
    "OnError",
    "Reservation",
    "Store",
    "StoreConfig",
    "StoreError",
    "bucket_state",
    "wait_until",
]


class Done:
    """An awaitable store call that already finished: awaiting it returns None at once.

    A store that does its work when called (the memory store) returns `DONE` from the
    calls that give something back or write something down; the middlewares' store policy
    sees it and leaves nothing to await, so an end hook built on it is synchronous and
    the pipeline opens no shielded scope for it.
    """

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator that yields nothing


DONE: Final = Done()
"""The one `Done`."""


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
"""What a middleware does when its store fails: admit, or answer 503."""


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
    apply their `on_error` policy. The methods typed as returning an `Awaitable` (`reserve`,
    `settle`, `acquire_slots`, `release_slots`, `cache_lookup`, `cache_set`, `unlock`,
    `admit`) may be *started* by the call and awaited later: a networked store sends the
    call when it is made and lets the awaitable wait for the answer, so that a caller that
    starts several before awaiting any (the admission of one request, `Context.defer`; the
    end hooks of one request) has them sent together. An `async def` is fine too: it runs
    when awaited. Whoever starts a call awaits it, even when it no longer needs the answer:
    the awaitable is what learns what the call took, so that it is given back. Methods
    that change state finish even when the caller is cancelled (see the module's notes).
    The store belongs to whoever created it: middlewares never close it.

    A store whose calls made together go out together may say so with an attribute
    `batches_calls = True` (optional; the Redis store on its own client, not on a Cluster
    or through Sentinel, has it): a model's deployments then
    send their first attempt's `admit` with the request's admission batch
    (`Deployments.prepare`).
    """

    def reserve(self, buckets: Sequence[Bucket]) -> Awaitable[Reservation]:
        """Reserve every bucket's amount, or none of them if any bucket lacks room."""
        ...

    def settle(self, buckets: Sequence[Bucket]) -> Awaitable[object]:
        """Add each bucket's signed amount to its level (a charge or a refund).

        A refund never takes a level below zero; a charge may take it above the limit.
        """
        ...

    def acquire_slots(self, limits: Mapping[str, int], lease: float) -> Awaitable[str | None]:
        """Take one slot under every key (key -> most slots), or none if any key is full.

        Slots expire `lease` seconds after they are taken, so an instance that dies cannot
        hold them forever.

        Returns:
          the slot's id (the same under every key), or None when a key is full.
        """
        ...

    def release_slots(self, keys: Sequence[str], slot: str) -> Awaitable[object]:
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

    def cache_set(self, key: str, value: bytes, ttl: float) -> Awaitable[object]:
        """Store `value` under `key` for `ttl` seconds, evicting others to stay in bounds."""
        ...

    def cache_lookup(
        self, key: str, lock: str | None, ttl: float
    ) -> Awaitable[tuple[bytes | None, str | None]]:
        """The value stored under `key`; if there is none, take the lock `lock` (if given).

        One atomic step: `cache_get`, then `try_lock` on a miss. It changes state (the
        lock), so it finishes even if its caller is cancelled.

        Returns:
          (the value, None) on a hit; (None, the lock's token) on a miss that took the
          lock; (None, None) on a miss whose lock someone else holds (or none was asked).
        """
        ...

    async def try_lock(self, key: str, ttl: float) -> str | None:
        """Take the lock `key` for at most `ttl` seconds.

        Returns:
          a token for `unlock`, or None when someone else holds the lock.
        """
        ...

    def unlock(self, key: str, token: str) -> Awaitable[object]:
        """Release the lock if `token` still holds it (not if it expired and was retaken)."""
        ...

    def admit(
        self, circuit: str, buckets: Sequence[Bucket], probe_lease: float
    ) -> Awaitable[Admission]:
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


def wait_until(ctx: Context, max_wait: float) -> float:
    """The trio time a wait must end by: `max_wait` from now, and never past the deadline."""
    give_up = trio.current_time() + max_wait
    if ctx.deadline is not None:
        give_up = min(give_up, ctx.deadline)
    return give_up
