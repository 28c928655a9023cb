"""The admission batch: the stateful middlewares' store calls sent together, refused alike.

The rate limiter and the concurrency limiter start their store calls and leave them
pending (`Context.defer`); the cache starts its lookup and awaits them all together. On
either store, a refusal raises the same error as before, and whatever the other calls of
the batch took (a slot, the cache's lock, a token estimate) is given back, also when the
request is cancelled while the batch is in flight.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
import trio

from benchmarks.redis_server import RedisServer
from middlewares import (
    Bucket,
    Cache,
    ConcurrencyLimiter,
    MemoryStore,
    RateLimiter,
    RedisStore,
    Reservation,
    Store,
)
from pipeline import Context, Pipeline, RateLimitError, Request, UnavailableError
from providers import MockProvider

from ..conftest import make_request
from ..helpers import assert_nothing_held


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    server: RedisServer = request.getfixturevalue("redis")
    async with RedisStore(server.url, timeout=2.0) as redis_store:
        yield redis_store


def stack(store: Store, provider: MockProvider, *, reject: bool = True, **limits: int) -> Pipeline:
    return Pipeline(
        provider,
        [
            RateLimiter(
                store,
                requests_per_minute=limits.get("rpm", 1000),
                tokens_per_minute=limits.get("tpm", 10**6),
            ),
            ConcurrencyLimiter(store, per_key=limits.get("per_key", 10), reject=reject),
            Cache(store),
        ],
    )


async def ask(pipeline: Pipeline, request: Request) -> str:
    stream = await pipeline.handle(request, Context(key_id="alice"))
    async with stream:
        return "".join([chunk.text async for chunk in stream])


async def assert_free(store: Store, pipeline: Pipeline, request: Request) -> None:
    """No slot, lock, fill or estimate is held, in this process or in the store."""
    assert_nothing_held(pipeline=pipeline)
    cache = pipeline.middlewares[2]
    assert isinstance(cache, Cache)
    lock = f"lock:{cache.key_for(request, Context(key_id='alice'))}"
    token = await store.try_lock(lock, 10)
    assert token is not None, "the cache's lock is still taken"
    await store.unlock(lock, token)
    slot = await store.acquire_slots({"cc:key:alice": 1}, 10)
    assert slot is not None, "a slot is still taken"
    await store.release_slots(["cc:key:alice"], slot)


async def test_a_rate_limited_request_gives_back_its_slot_and_lock(store: Store) -> None:
    provider = MockProvider("hi", chunks=2)
    pipeline = stack(store, provider, rpm=1)
    assert await ask(pipeline, make_request("first")) == "hi"
    second = make_request("second")
    with pytest.raises(RateLimitError, match="Rate limit reached: requests per minute"):
        await ask(pipeline, second)
    assert provider.calls == 1
    await assert_free(store, pipeline, second)


async def test_a_request_refused_a_slot_gives_back_its_lock_and_estimate(store: Store) -> None:
    provider = MockProvider("hi", chunks=2)
    pipeline = stack(store, provider, per_key=1)
    assert await ask(pipeline, make_request("first")) == "hi"
    held = await store.acquire_slots({"cc:key:alice": 1}, 60)
    assert held is not None
    request = make_request("refused")
    with pytest.raises(UnavailableError, match="Too many requests in flight"):
        await ask(pipeline, request)
    assert provider.calls == 1
    await store.release_slots(["cc:key:alice"], held)
    await assert_free(store, pipeline, request)
    # Nothing of the refused request's estimate is left charged: the whole limit is there.
    limiter = pipeline.middlewares[0]
    assert isinstance(limiter, RateLimiter)
    reservation = await store.reserve(
        [b.bucket for b in limiter._limits(request, Context(key_id="alice"))[1]]
    )
    assert reservation.granted


class SlowReserve(MemoryStore):
    """A memory store whose reservation waits (a checkpoint): the request is cancelled there.

    The slot and the lookup (with its lock) after it in the batch are then taken while
    the batch is abandoned, and must be given back.
    """

    async def reserve(self, buckets: Sequence[Bucket]) -> Reservation:
        await trio.sleep(1)
        return await super().reserve(buckets)


async def test_a_request_cancelled_while_admitted_gives_everything_back() -> None:
    store = SlowReserve()
    provider = MockProvider("hi", chunks=2)
    pipeline = stack(store, provider)
    request = make_request("cancelled")
    with trio.move_on_after(0.5) as scope:
        await ask(pipeline, request)
    assert scope.cancelled_caught
    assert provider.calls == 0
    await assert_free(store, pipeline, request)


async def test_a_request_cancelled_while_waiting_for_a_slot_gives_everything_back(
    store: Store,
) -> None:
    # Its lookup (with the cache's lock) went out with the first try for a slot; the
    # request is cancelled while it waits for a slot to come free.
    provider = MockProvider("hi", chunks=2)
    pipeline = stack(store, provider, per_key=1, reject=False)
    # Redis learns the scripts first: a script it does not know yet is sent again only
    # when its answer is awaited.
    assert await ask(pipeline, make_request("first")) == "hi"
    held = await store.acquire_slots({"cc:key:alice": 1}, 60)
    assert held is not None
    request = make_request("waiting")
    with trio.move_on_after(0.3) as scope:
        await ask(pipeline, request)
    assert scope.cancelled_caught
    assert provider.calls == 1
    await store.release_slots(["cc:key:alice"], held)
    await assert_free(store, pipeline, request)


async def test_a_request_cancelled_during_its_answer_gives_everything_back(store: Store) -> None:
    provider = MockProvider("hi", chunks=20, ttft=0.05, chunk_delay=0.05)
    pipeline = stack(store, provider)
    request = make_request("cut")
    with trio.move_on_after(0.2) as scope:
        await ask(pipeline, request)
    assert scope.cancelled_caught
    await assert_free(store, pipeline, request)
