"""MemoryStore on trio's virtual clock: draining, leases, expiry, waking waiters, sweeping.

What every store must do alike (all-or-nothing reservations, settling, slots under several
keys, finishing under cancellation) is in tests/redis/test_store.py, run on both stores.
"""

from __future__ import annotations

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from middlewares import Bucket, BucketState, MemoryStore, MemoryStoreStatistics, Reservation


class FakeClock:
    """A clock the test moves by hand, for property tests that run outside trio time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def per_minute(key: str, limit: int, amount: int = 1) -> Bucket:
    return Bucket(key, limit, 60.0, amount)


# -- rate limits ---------------------------------------------------------------------------


async def test_reserve_grants_up_to_the_limit_then_says_how_long_to_wait() -> None:
    store = MemoryStore(clock=FakeClock())
    grants = [await store.reserve([per_minute("a", 3)]) for _ in range(3)]
    assert all(g.granted for g in grants)
    assert [g.states[0].remaining for g in grants] == [2, 1, 0]
    assert grants[-1].states[0] == BucketState(limit=3, remaining=0, reset=60.0)
    denied = await store.reserve([per_minute("a", 3)])
    assert denied == Reservation(False, 20.0, (BucketState(3, 0, 60.0),))


async def test_a_bucket_drains_continuously_over_its_window() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    for _ in range(6):
        assert (await store.reserve([per_minute("a", 6)])).granted
    clock.now += 10  # one request's worth drains every 10 s
    grant = await store.reserve([per_minute("a", 6)])
    assert grant.granted
    assert not (await store.reserve([per_minute("a", 6)])).granted
    clock.now += 60
    assert (await store.reserve([per_minute("a", 6, amount=6)])).granted


operations = st.lists(st.tuples(st.integers(0, 30), st.integers(1, 12)), min_size=1, max_size=60)


@given(limit=st.integers(1, 20), ops=operations)
async def test_grants_in_any_interval_never_exceed_limit_plus_what_drained(
    limit: int, ops: list[tuple[int, int]]
) -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    granted: list[tuple[float, int]] = []
    for step, amount in ops:
        clock.now += step
        if (await store.reserve([per_minute("k", limit, amount)])).granted:
            granted.append((clock.now, amount))
    rate = limit / 60.0
    for i, (start, _) in enumerate(granted):
        total = 0
        for at, amount in granted[i:]:
            total += amount
            assert total <= limit + (at - start) * rate + 1e-9


@given(limit=st.integers(1, 20), ops=operations)
async def test_a_denial_changes_nothing_and_its_retry_after_is_enough(
    limit: int, ops: list[tuple[int, int]]
) -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    for step, amount in ops:
        clock.now += step
        bucket = per_minute("k", limit, amount)
        result = await store.reserve([bucket])
        if not result.granted:
            again = await store.reserve([bucket])
            assert again == result
            if amount <= limit:
                clock.now += result.retry_after + 1e-6
                assert (await store.reserve([bucket])).granted


# -- concurrency slots ---------------------------------------------------------------------


async def test_a_slot_expires_after_its_lease(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    assert await store.acquire_slots({"k": 1}, lease=30) is not None
    await trio.sleep(29.9)
    assert await store.acquire_slots({"k": 1}, lease=30) is None
    await trio.sleep(0.1)
    assert await store.acquire_slots({"k": 1}, lease=30) is not None


async def test_a_release_wakes_a_waiter_at_once(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    slot = await store.acquire_slots({"k": 1}, lease=60)
    assert slot is not None
    woke: list[float] = []
    start = trio.current_time()

    async def waiter() -> None:
        with trio.move_on_after(100):
            await store.wait_for_slot(["other", "k"])
        woke.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(5)
        await store.release_slots(["k"], slot)
    assert woke == [start + 5]
    assert store.statistics().slot_waiters == {}


async def test_a_release_wakes_the_longest_waiter_of_each_key_not_yet_woken(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    slot = await store.acquire_slots({"k1": 1, "k2": 1}, lease=60)
    assert slot is not None
    woke: list[str] = []

    async def waiter(name: str, keys: list[str]) -> None:
        with trio.move_on_after(100):
            await store.wait_for_slot(keys)
            woke.append(name)

    async with trio.open_nursery() as nursery:
        for name, keys in [("a", ["k1", "k2"]), ("b", ["k2"]), ("c", ["k2"]), ("d", ["k1"])]:
            nursery.start_soon(waiter, name, keys)
            await trio.sleep(1)
        await store.release_slots(["k1", "k2"], slot)
        await trio.sleep(1)
        # k1 wakes a (the oldest there); k2's oldest is a too, already woken, so b.
        assert sorted(woke) == ["a", "b"]
    assert sorted(woke) == ["a", "b"]  # c and d gave up at their timeout
    assert store.statistics().slot_waiters == {}


async def test_a_waiter_that_gives_up_leaves_nothing_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    with trio.move_on_after(7) as scope:
        await store.wait_for_slot(["k", "global"])
    assert scope.cancelled_caught
    assert store.statistics().slot_waiters == {}


# -- cache and locks -----------------------------------------------------------------------


async def test_cache_entries_expire_after_their_ttl(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    await store.cache_set("a", b"answer", ttl=10)
    assert await store.cache_get("a") == b"answer"
    await trio.sleep(10)
    assert await store.cache_get("a") is None
    assert await store.cache_get("never") is None


async def test_the_cache_evicts_the_least_recently_used_by_count_and_by_bytes() -> None:
    store = MemoryStore(cache_max_entries=3, cache_max_bytes=10)
    for key in "abc":
        await store.cache_set(key, b"xx", ttl=60)
    await store.cache_get("a")  # now b is the least recently used
    await store.cache_set("d", b"xx", ttl=60)
    assert [await store.cache_get(k) is not None for k in "abcd"] == [True, False, True, True]
    await store.cache_set("e", b"x" * 8, ttl=60)  # 2 + 2 + 2 + 8 > 10 bytes
    assert [await store.cache_get(k) is not None for k in "acde"] == [False, False, True, True]
    await store.cache_set("d", b"x" * 11, ttl=60)  # larger than the whole cache: not stored
    assert await store.cache_get("d") is None
    assert await store.cache_get("e") == b"x" * 8


async def test_a_lock_has_one_holder_until_unlocked_or_expired(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    token = await store.try_lock("l", ttl=5)
    assert token is not None
    assert await store.try_lock("l", ttl=5) is None
    await store.unlock("l", "someone-else")
    assert await store.try_lock("l", ttl=5) is None
    await store.unlock("l", token)
    second = await store.try_lock("l", ttl=5)
    assert second is not None
    await trio.sleep(5)
    third = await store.try_lock("l", ttl=5)
    assert third is not None
    await store.unlock("l", second)  # expired and retaken: the stale token releases nothing
    assert await store.try_lock("l", ttl=5) is None


async def test_sweep_forgets_everything_expired(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    await store.reserve([per_minute("r", 10, 5)])
    await store.acquire_slots({"s": 1}, lease=10)
    await store.try_lock("l", ttl=10)
    await store.cache_set("c", b"v", ttl=10)
    store.sweep()
    assert "buckets=1, slot_keys=1, cache_entries=1, cache_bytes=1" in repr(store)
    await trio.sleep(30)
    store.sweep()
    assert repr(store) == "MemoryStore(buckets=0, slot_keys=0, cache_entries=0, cache_bytes=0)"
    assert store.statistics().locks == 0


async def test_the_store_sweeps_by_itself_as_it_is_used() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    for i in range(MemoryStore.SWEEP_EVERY // 2):
        await store.reserve([per_minute(f"k{i}", 60)])
    clock.now += 61
    for _ in range(MemoryStore.SWEEP_EVERY // 2):
        await store.reserve([per_minute("hot", 10**9)])
    assert "buckets=1," in repr(store)


async def test_statistics_show_what_is_held_until_it_is_given_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    await store.reserve([per_minute("r", 10, 5)])
    slot = await store.acquire_slots({"s": 1, "global": 2}, lease=60)
    assert slot is not None
    token = await store.try_lock("l", ttl=60)
    assert token is not None
    await store.cache_set("c", b"value", ttl=60)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.wait_for_slot, ["s"])
        await trio.testing.wait_all_tasks_blocked()
        held = store.statistics()
        assert held == MemoryStoreStatistics(
            levels={"r": 5.0},
            slots={"s": 1, "global": 1},
            slot_waiters={"s": 1},
            locks=1,
            cache_entries=1,
            cache_bytes=5,
        )
        await store.release_slots(["s", "global"], slot)
    await store.unlock("l", token)
    await trio.sleep(15)  # the bucket drains 10 units a minute: 2.5 of 5 are gone
    assert store.statistics() == MemoryStoreStatistics(
        levels={"r": 2.5}, slots={}, slot_waiters={}, locks=0, cache_entries=1, cache_bytes=5
    )
