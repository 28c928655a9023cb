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
    Retry,
    Timeout,
)
from pipeline import Context, Pipeline, Request, ResponseStream, Route, Router
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


class Watched(MockProvider):
    """A mock that notes the store's counts when it is called: what went before it."""

    def __init__(self, store: RedisStore) -> None:
        super().__init__("hi", chunks=2)
        self.store = store
        self.seen: list[tuple[int, int]] = []

    async def execute(self, request: Request, ctx: Context) -> ResponseStream:
        counts = self.store.statistics()
        self.seen.append((counts.commands, counts.writes))
        return await super().execute(request, ctx)


async def test_a_deployments_admission_joins_the_batch(redis: RedisServer) -> None:
    async with RedisStore(redis.url, timeout=2.0) as store:
        upstream = Watched(store)
        deployments = Deployments(
            "mock",
            [Deployment(upstream, "m", requests_per_minute=1000)],
            store=store,
            policy=CircuitPolicy(failures=5, window=60.0, cooldown=10.0),
        )
        pipeline = Pipeline(
            Router({"mock-1": Route(deployments, "mock-1")}),
            [
                RateLimiter(store, requests_per_minute=1000, tokens_per_minute=10**6),
                ConcurrencyLimiter(store, per_key=10),
                Cache(store),
                Retry(max_attempts=2),
                Timeout(first_token=5.0),
            ],
        )
        await _one(pipeline, make_request("zero"))
        await _one(pipeline, make_request("zero"))
        # A miss: the deployment's admission (its circuit and its own limits, one script)
        # is started with the batch (`Deployments.prepare`) and sent in its write, though
        # the cache must tell a hit from a miss first and retry and timeout sit between.
        before = store.statistics()
        assert await _counted(store, pipeline, make_request("one")) == (8, 2)
        assert upstream.seen[-1] == (before.commands + 4, before.writes + 1)
        # A hit never reaches the deployments: what the admission took is given back
        # (the request refunded on the deployment's bucket) with the other end calls.
        calls = upstream.calls
        assert await _counted(store, pipeline, make_request("one")) == (7, 2)
        assert upstream.calls == calls
