"""How many round trips to Redis one request makes, counted by the store's own client.

`RedisStore.statistics()` counts the commands its client wrote and the writes that
carried them; each write is one round trip (the client waits for the replies to a write
before it needs another). The counts are exact for one request at a time.
"""

from __future__ import annotations

from benchmarks.redis_server import RedisServer
from middlewares import (
    Cache,
    CircuitPolicy,
    ConcurrencyLimiter,
    Deployment,
    Deployments,
    RateLimiter,
    RedisStore,
)
from pipeline import Context, Pipeline, Request
from providers import MockProvider

from ..conftest import make_request


async def _one(pipeline: Pipeline, request: Request) -> None:
    stream = await pipeline.handle(request, Context(key_id="alice"))
    async with stream:
        async for _ in stream:
            pass


async def _counted(store: RedisStore, pipeline: Pipeline, request: Request) -> tuple[int, int]:
    before = store.statistics()
    await _one(pipeline, request)
    after = store.statistics()
    return after.commands - before.commands, after.writes - before.writes


async def test_a_miss_and_a_hit_through_the_stateful_middlewares(redis: RedisServer) -> None:
    async with RedisStore(redis.url, timeout=2.0) as store:
        pipeline = Pipeline(
            MockProvider("hi", chunks=2),
            [
                RateLimiter(store, requests_per_minute=1000, tokens_per_minute=10**6),
                ConcurrencyLimiter(store, per_key=10),
                Cache(store),
            ],
        )
        # Connect and load the scripts first (a script's first call is answered NOSCRIPT
        # and sent again with its source): neither is the request's.
        await _one(pipeline, make_request("zero"))
        await _one(pipeline, make_request("zero"))
        # A miss: reserve, take a slot, and look up taking the lock, started by the three
        # middlewares and sent together (the cache awaits them all at once); then settle,
        # release, store and unlock, started together at the end.
        assert await _counted(store, pipeline, make_request("one")) == (7, 2)
        # A hit: reserve, take a slot, look up; then settle (the estimate refunded) and
        # release together.
        assert await _counted(store, pipeline, make_request("one")) == (5, 2)


async def test_a_deployments_admission_is_one_more_round_trip(redis: RedisServer) -> None:
    async with RedisStore(redis.url, timeout=2.0) as store:
        deployments = Deployments(
            "mock",
            [Deployment(MockProvider("hi", chunks=2), "m", requests_per_minute=1000)],
            store=store,
            policy=CircuitPolicy(failures=5, window=60.0, cooldown=10.0),
        )
        pipeline = Pipeline(
            deployments,
            [
                RateLimiter(store, requests_per_minute=1000, tokens_per_minute=10**6),
                ConcurrencyLimiter(store, per_key=10),
                Cache(store),
            ],
        )
        await _one(pipeline, make_request("zero"))
        await _one(pipeline, make_request("zero"))
        # The cache must know hit or miss before the upstream is asked (a hit takes no
        # deployment), and retry and timeout middlewares sit between: the deployment's
        # admission (its circuit and its own limits, one script) is a round trip of its own.
        assert await _counted(store, pipeline, make_request("one")) == (8, 3)
        # A hit never reaches the deployments.
        assert await _counted(store, pipeline, make_request("one")) == (5, 2)
