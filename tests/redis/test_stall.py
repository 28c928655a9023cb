"""A Redis that stalls (SIGSTOP, then SIGCONT) under load leaves no slot or reservation behind.

A call that times out is still in the socket; Redis runs it when it resumes. The store
must undo what it could not confirm, so the key serves its full concurrency again and the
token bucket holds only what was really used, within seconds of Redis coming back.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import pytest
import trio

from benchmarks.redis_server import RedisServer
from middlewares import Bucket, ConcurrencyLimiter, RateLimiter, RedisStore, StoreError
from pipeline import Context, Pipeline, UnavailableError
from providers import MockProvider

from ..conftest import make_request

OnError = Literal["fail_open", "fail_closed"]

TIMEOUT = 0.3
PER_KEY = 8
SLOTS = {"cc:key:anonymous": PER_KEY, "cc:global": 50}
TOKENS = 100_000
RECOVERY = 10.0
"""Seconds after Redis resumes within which everything must be undone (a hang would not)."""


async def _one(pipeline: Pipeline) -> None:
    with contextlib.suppress(UnavailableError):  # fail_closed while Redis is stalled
        await pipeline.complete(make_request(), Context())


async def _all_undone(store: RedisStore) -> None:
    """Wait until the store has undone every call that got no answer in time."""
    with trio.fail_after(RECOVERY):
        while True:
            if not store.statistics().unconfirmed:
                return
            await trio.sleep(0.05)


async def _take(store: RedisStore, lease: float) -> str:
    """Take the one global slot as soon as it is free."""
    with trio.fail_after(RECOVERY):
        while True:
            slot = await store.acquire_slots({"cc:global": 1}, lease)
            if slot is not None:
                return slot
            await trio.sleep(0.1)


async def _full_concurrency_again(store: RedisStore) -> float:
    """Seconds until all of the key's slots can be taken together (then given back)."""
    started = trio.current_time()
    with trio.fail_after(RECOVERY):
        while True:
            slots = [await store.acquire_slots(SLOTS, 600) for _ in range(PER_KEY)]
            taken = [slot for slot in slots if slot is not None]
            if len(taken) == PER_KEY:
                # ... and not one more: the limit still holds.
                assert await store.acquire_slots(SLOTS, 600) is None
            for slot in taken:
                await store.release_slots(list(SLOTS), slot)
            if len(taken) == PER_KEY:
                return trio.current_time() - started
            await trio.sleep(0.1)


@pytest.mark.parametrize("on_error", ["fail_open", "fail_closed"])
async def test_after_a_stall_the_key_serves_its_full_concurrency_and_tokens_are_settled(
    redis: RedisServer, on_error: OnError
) -> None:
    async with RedisStore(redis.url, timeout=TIMEOUT) as store:
        provider = MockProvider("hi")
        limited = Pipeline(
            provider,
            [
                ConcurrencyLimiter(
                    store, per_key=PER_KEY, max_concurrency=50, reject=True, on_error=on_error
                )
            ],
        )
        metered = Pipeline(
            provider,
            [RateLimiter(store, tokens_per_minute=TOKENS, on_error=on_error)],
        )
        # Warm up: the scripts are loaded, so a stalled call is one Redis will run later.
        await _one(limited)
        await _one(metered)
        redis.pause()
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(3):  # waves of requests, every one of them timing out
                    for _ in range(PER_KEY):
                        nursery.start_soon(_one, limited)
                        nursery.start_soon(_one, metered)
                    await trio.sleep(0.4)
                await trio.sleep(0.3)
        finally:
            redis.resume()
        await _full_concurrency_again(store)
        await _all_undone(store)
        # 24 stalled reservations of ~1,030 tokens each would take ~15 s to drain.
        (state,) = (await store.reserve([Bucket("rl:tok:key:anonymous", TOKENS, 60.0, 0)])).states
        assert state.remaining > TOKENS - 1_000
        assert store.statistics().slots == 0


async def test_a_held_slot_is_renewed_and_one_nobody_renews_lapses_within_the_slot_lease(
    redis: RedisServer,
) -> None:
    async with RedisStore(redis.url, timeout=TIMEOUT, slot_lease=0.6) as other:
        async with RedisStore(redis.url, timeout=TIMEOUT, slot_lease=0.6) as dying:
            slot = await dying.acquire_slots({"cc:global": 1}, 600)
            assert slot is not None
            assert dying.statistics().slots == 1
            await trio.sleep(1.5)  # well past the slot lease: renewed meanwhile
            assert await other.acquire_slots({"cc:global": 1}, 600) is None
        # The instance is gone without giving the slot back: it lapses within its lease.
        taken = await _take(other, 600)
        await other.release_slots(["cc:global"], taken)
        assert other.statistics().slots == 0


async def test_a_slot_is_renewed_no_longer_than_its_callers_lease(redis: RedisServer) -> None:
    async with RedisStore(redis.url, timeout=TIMEOUT, slot_lease=0.6) as store:
        assert await store.acquire_slots({"cc:global": 1}, 1.0) is not None
        await _take(store, 1.0)
        assert store.statistics().slots == 1  # the second one, the first lapsed


async def test_a_reservation_that_timed_out_is_refunded_once_redis_answers(
    redis: RedisServer,
) -> None:
    bucket = Bucket("rl:tok:key:a", 1_000, 60.0, 600)
    async with RedisStore(redis.url, timeout=TIMEOUT) as store:
        assert (await store.reserve([bucket])).granted
        await store.settle([Bucket(bucket.key, 1_000, 60.0, -600)])
        redis.pause()
        try:
            with pytest.raises(StoreError, match="no answer"):
                await store.reserve([bucket])
            assert store.statistics().unconfirmed == 1
            await trio.sleep(2 * TIMEOUT)
        finally:
            redis.resume()
        await _all_undone(store)
        # 600 of 1,000 leaked would leave ~400; the refund leaves (nearly) all of it.
        (state,) = (await store.reserve([Bucket(bucket.key, 1_000, 60.0, 0)])).states
        assert state.remaining >= 990
