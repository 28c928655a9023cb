"""How many round trips to Redis one request makes, counted by the store's own client.

`RedisStore.statistics()` counts the commands its client wrote and the writes that
carried them; each write is one round trip (the client waits for the replies to a write
before it needs another). The counts are exact for one request at a time.
"""

from __future__ import annotations

from benchmarks.redis_server import RedisServer
from middlewares import Cache, ConcurrencyLimiter, RateLimiter, RedisStore
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
        # A miss: reserve, take a slot, look up, lock; then settle, release, store and
        # unlock, started together at the end.
        assert await _counted(store, pipeline, make_request("one")) == (8, 5)
        # A hit: reserve, take a slot, look up; then settle (the estimate refunded) and
        # release together.
        assert await _counted(store, pipeline, make_request("one")) == (5, 4)
