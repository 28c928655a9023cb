"""The store contract, held by `MemoryStore` and `RedisStore` alike, on a real clock.

Each contract test runs against both stores (`store` is parametrized); the Redis one runs
against a real `redis-server`. Times are real, so waits are short and comparisons allow
for the milliseconds that pass between calls.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.redis_server import RedisServer
from middlewares import Bucket, MemoryStore, RedisStore, Store

HOUR = 3600.0
"""A window long enough that nothing drains noticeably during a test."""


def bucket(key: str, limit: int, amount: int = 1, window: float = HOUR) -> Bucket:
    return Bucket(key, limit, window, amount)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore(cache_max_bytes=100)
        return
    server: RedisServer = request.getfixturevalue("redis")
    async with RedisStore(server.url, timeout=0.5, cache_max_bytes=100) as redis_store:
        yield redis_store


# -- rate limits ---------------------------------------------------------------------------


async def test_reserve_grants_up_to_the_limit_then_says_how_long_to_wait(store: Store) -> None:
    grants = [await store.reserve([bucket("a", 3, window=60.0)]) for _ in range(3)]
    assert all(g.granted for g in grants)
    assert [g.states[0].remaining for g in grants] == [2, 1, 0]
    assert grants[-1].states[0].reset == pytest.approx(60.0, abs=0.1)
    denied = await store.reserve([bucket("a", 3, window=60.0)])
    assert not denied.granted
    assert denied.retry_after == pytest.approx(20.0, abs=0.1)
    assert denied.states[0].remaining == 0


async def test_reserve_is_all_or_nothing_over_several_buckets(store: Store) -> None:
    assert (await store.reserve([bucket("full", 1)])).granted
    denied = await store.reserve([bucket("roomy", 10, 4), bucket("full", 1)])
    assert not denied.granted
    assert denied.retry_after == pytest.approx(HOUR, rel=1e-3)
    assert denied.states[0].remaining == 10  # nothing was taken from the roomy bucket
    assert (await store.reserve([bucket("roomy", 10, 10)])).granted


async def test_the_longest_wait_of_the_denied_buckets_is_reported(store: Store) -> None:
    await store.reserve([bucket("a", 2, 2, 60.0), bucket("b", 60, 60, 60.0)])
    denied = await store.reserve([bucket("a", 2, 1, 60.0), bucket("b", 60, 30, 60.0)])
    assert denied.retry_after == pytest.approx(30.0, abs=0.1)


async def test_settle_refunds_and_charges_and_may_overdraw(store: Store) -> None:
    await store.reserve([bucket("t", 100, 80)])
    await store.settle([bucket("t", 100, -50)])
    grant = await store.reserve([bucket("t", 100, 70)])
    assert grant.granted
    assert grant.states[0].remaining == 0
    await store.settle([bucket("t", 100, 60)])  # real usage exceeded the estimate
    denied = await store.reserve([bucket("t", 100, 1)])
    assert denied.retry_after == pytest.approx(61 * HOUR / 100, rel=1e-3)
    await store.settle([bucket("t", 100, -1000)])  # a refund never goes below empty
    assert (await store.reserve([bucket("t", 100, 100)])).granted


async def test_a_bucket_drains_over_its_window(store: Store) -> None:
    fast = bucket("fast", 2, window=0.4)  # one unit drains every 0.2 s
    assert (await store.reserve([fast])).granted
    assert (await store.reserve([fast])).granted
    assert not (await store.reserve([fast])).granted
    await trio.sleep(0.25)
    assert (await store.reserve([fast])).granted


async def test_two_stores_on_one_backend_enforce_one_limit(
    store: Store, request: pytest.FixtureRequest
) -> None:
    other = store
    async with trio.open_nursery() as nursery:
        if isinstance(store, RedisStore):
            # A second client with its own connections: another proxy instance.
            other = RedisStore(request.getfixturevalue("redis").url, timeout=0.5)
            await nursery.start(_hold_open, other)
        grants: list[bool] = []

        async def one(on: Store) -> None:
            grants.append((await on.reserve([bucket("shared", 10)])).granted)

        async with trio.open_nursery() as requests:
            for i in range(100):
                requests.start_soon(one, (store, other)[i % 2])
        nursery.cancel_scope.cancel()
    assert grants.count(True) == 10


async def _hold_open(store: RedisStore, task_status: trio.TaskStatus[None]) -> None:
    async with store:
        task_status.started()
        await trio.sleep_forever()


# -- concurrency slots ---------------------------------------------------------------------


async def test_slots_are_taken_under_every_key_or_none(store: Store) -> None:
    first = await store.acquire_slots({"key": 2, "global": 2}, lease=60)
    second = await store.acquire_slots({"other": 2, "global": 2}, lease=60)
    assert first is not None
    assert second is not None
    assert first != second
    assert await store.acquire_slots({"key": 2, "global": 2}, lease=60) is None
    await store.release_slots(["other", "global"], second)
    third = await store.acquire_slots({"key": 2, "global": 2}, lease=60)
    assert third is not None
    assert await store.acquire_slots({"key": 2}, lease=60) is None
    await store.release_slots(["key", "global"], "not-a-slot")  # ignored
    assert await store.acquire_slots({"key": 2}, lease=60) is None


async def test_a_slot_lapses_after_its_lease(store: Store) -> None:
    assert await store.acquire_slots({"k": 1}, lease=0.2) is not None
    assert await store.acquire_slots({"k": 1}, lease=0.2) is None
    await trio.sleep(0.25)
    assert await store.acquire_slots({"k": 1}, lease=0.2) is not None


async def test_wait_for_slot_returns_and_may_be_cut_short(store: Store) -> None:
    with trio.move_on_after(0.05) as scope:
        await store.wait_for_slot(["k", "global"])
    assert scope.cancelled_caught


# -- cache and locks -----------------------------------------------------------------------


async def test_cache_entries_expire_after_their_ttl(store: Store) -> None:
    await store.cache_set("a", b"answer", ttl=0.2)
    assert await store.cache_get("a") == b"answer"
    await trio.sleep(0.25)
    assert await store.cache_get("a") is None
    assert await store.cache_get("never") is None


async def test_a_value_larger_than_the_bound_is_not_stored(store: Store) -> None:
    await store.cache_set("a", b"x" * 100, ttl=60)
    assert await store.cache_get("a") == b"x" * 100
    await store.cache_set("a", b"x" * 101, ttl=60)
    assert await store.cache_get("a") is None


async def test_a_lock_has_one_holder_until_unlocked_or_expired(store: Store) -> None:
    token = await store.try_lock("l", ttl=0.2)
    assert token is not None
    assert await store.try_lock("l", ttl=0.2) is None
    await store.unlock("l", "someone-else")
    assert await store.try_lock("l", ttl=0.2) is None
    await store.unlock("l", token)
    second = await store.try_lock("l", ttl=0.2)
    assert second is not None
    await trio.sleep(0.25)
    third = await store.try_lock("l", ttl=5)
    assert third is not None
    await store.unlock("l", second)  # expired and retaken: the stale token releases nothing
    assert await store.try_lock("l", ttl=5) is None


async def test_calls_that_change_state_finish_even_when_the_caller_is_cancelled(
    store: Store,
) -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        grant = await store.reserve([bucket("r", 1)])
        slot = await store.acquire_slots({"s": 1}, lease=60)
        token = await store.try_lock("l", ttl=60)
        await store.cache_set("c", b"v", ttl=60)
    assert grant.granted
    assert slot is not None
    assert token is not None
    assert not (await store.reserve([bucket("r", 1)])).granted
    assert await store.acquire_slots({"s": 1}, lease=60) is None
    assert await store.try_lock("l", ttl=60) is None
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.settle([bucket("r", 1, -1)])
        await store.release_slots(["s"], slot)
        await store.unlock("l", token)
    assert (await store.reserve([bucket("r", 1)])).granted
    assert await store.acquire_slots({"s": 1}, lease=60) is not None
    assert await store.try_lock("l", ttl=60) is not None
    assert await store.cache_get("c") == b"v"


# -- the Redis store answers as the memory store does ---------------------------------------

steps = st.lists(
    st.tuples(
        st.sampled_from(["reserve", "settle"]),
        st.lists(st.tuples(st.sampled_from("abc"), st.integers(-8, 12)), min_size=1, max_size=3),
    ),
    min_size=1,
    max_size=25,
)
LIMITS = {"a": 5, "b": 12, "c": 30}
examples = itertools.count()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=steps)
async def test_redis_grants_and_reports_what_the_memory_store_does(
    redis: RedisServer, steps: list[tuple[str, list[tuple[str, int]]]]
) -> None:
    # Each example starts from empty buckets: a fresh key space per example.
    prefix = f"example{next(examples)}:"
    async with RedisStore(redis.url, prefix=prefix, timeout=0.5) as redis_store:
        await _compare(MemoryStore(clock=lambda: 0.0), redis_store, steps)


async def _compare(
    memory: MemoryStore, redis_store: RedisStore, steps: list[tuple[str, list[tuple[str, int]]]]
) -> None:
    for operation, amounts in steps:
        buckets = [
            bucket(name, LIMITS[name], max(1, amount) if operation == "reserve" else amount)
            for name, amount in dict(amounts).items()
        ]
        if operation == "settle":
            await memory.settle(buckets)
            await redis_store.settle(buckets)
            continue
        expected = await memory.reserve(buckets)
        got = await redis_store.reserve(buckets)
        assert got.granted == expected.granted
        assert [s.remaining for s in got.states] == [s.remaining for s in expected.states]
        assert got.retry_after == pytest.approx(expected.retry_after, rel=1e-3, abs=0.05)
