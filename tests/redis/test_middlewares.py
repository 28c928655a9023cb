"""The stateful middlewares over two instances that share one store, for both stores.

"Two instances" are two middleware objects (two pipelines) on one store: for the memory
store they share its object, for Redis each has its own client and connections, as two
proxy processes would. The scenarios are the same for both, and so are the answers.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from benchmarks.redis_server import RedisServer
from middlewares import (
    Cache,
    ConcurrencyLimiter,
    MemoryStore,
    RateLimiter,
    RedisStore,
    Store,
    StoreError,
)
from pipeline import (
    Context,
    Middleware,
    Pipeline,
    ProviderError,
    RateLimitError,
    Request,
    ResponseStream,
    StreamError,
    UnavailableError,
)
from providers import MockProvider

from ..conftest import make_request

TEXT = "abcd" * 10  # 10 completion tokens
USAGE = 6 + 10  # make_request("hello") has about 6 prompt tokens


@pytest.fixture(params=["memory", "redis"])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Store, Store]]:
    """The store as instance A and instance B see it."""
    if request.param == "memory":
        store = MemoryStore()
        yield store, store
        return
    url = request.getfixturevalue("redis").url
    async with RedisStore(url, timeout=0.5) as a, RedisStore(url, timeout=0.5) as b:
        yield a, b


def pipelines(
    stores: tuple[Store, Store], provider: MockProvider, build: Any
) -> tuple[Pipeline, Pipeline]:
    """Instance A and instance B: the same middlewares, each on its own view of the store."""
    return Pipeline(provider, build(stores[0])), Pipeline(provider, build(stores[1]))


# -- rate limits ---------------------------------------------------------------------------


async def test_of_100_concurrent_requests_over_two_instances_exactly_10_pass(
    stores: tuple[Store, Store],
) -> None:
    provider = MockProvider(TEXT, ttft=0.05)
    a, b = pipelines(stores, provider, lambda s: [RateLimiter(s, requests_per_minute=10)])
    passed: list[Context] = []
    rejected: list[RateLimitError] = []

    async def one(pipeline: Pipeline) -> None:
        ctx = Context()
        try:
            await pipeline.complete(make_request(), ctx)
        except RateLimitError as exc:
            rejected.append(exc)
        else:
            passed.append(ctx)

    async with trio.open_nursery() as nursery:
        for i in range(100):
            nursery.start_soon(one, (a, b)[i % 2])
    assert len(passed) == 10
    assert provider.calls == 10
    assert len(rejected) == 90
    for error in rejected:
        assert error.status == 429
        assert error.retry_after is not None
        assert 0 < error.retry_after <= 6
        assert int(error.headers["retry-after"]) >= 1


async def test_tokens_settle_with_real_usage_across_instances(
    stores: tuple[Store, Store],
) -> None:
    provider = MockProvider(TEXT)
    a, b = pipelines(stores, provider, lambda s: [RateLimiter(s, tokens_per_minute=6000)])
    estimate = 6 + 500
    first = Context()
    await a.complete(make_request(max_tokens=500), first)
    # A reserved the estimate, then settled the real usage once the answer ended.
    assert int(first.response_headers["x-ratelimit-remaining-tokens"]) == 6000 - estimate
    second = Context()
    await b.complete(make_request(max_tokens=500), second)
    remaining = int(second.response_headers["x-ratelimit-remaining-tokens"])
    # B sees what A was charged: its usage, not its estimate (less what drained meanwhile,
    # 100 tokens a second).
    assert 6000 - USAGE - estimate <= remaining <= 6000 - USAGE - estimate + 50


# -- concurrency ---------------------------------------------------------------------------


class Counting(MockProvider):
    """Counts the streams it has open, and the most at once."""

    def __init__(self, **options: Any) -> None:
        super().__init__(TEXT, chunks=4, **options)
        self.most = 0

    async def execute(self, request: Request, ctx: Context) -> ResponseStream:
        stream = await super().execute(request, ctx)
        self.most = max(self.most, self.open_streams)
        return stream


async def test_two_instances_never_run_more_than_the_limit_together(
    stores: tuple[Store, Store],
) -> None:
    provider = Counting(chunk_delay=0.02)
    a, b = pipelines(
        stores, provider, lambda s: [ConcurrencyLimiter(s, max_concurrency=2, max_wait=10)]
    )
    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(a.complete if i % 2 else b.complete, make_request())
    assert provider.calls == 6
    assert provider.most == 2
    assert await stores[1].acquire_slots({"cc:global": 1}, 60) is not None  # all given back


@pytest.mark.parametrize(
    "how",
    [
        "success",
        "error before the stream",
        "error mid-stream",
        "consumer closes early",
        "cancelled before the stream",
        "cancelled mid-stream",
    ],
)
async def test_the_slot_is_released_on_every_path(stores: tuple[Store, Store], how: str) -> None:
    provider = {
        "success": MockProvider("x" * 40, chunks=3),
        "error before the stream": MockProvider(error=ProviderError("boom", upstream_status=500)),
        "cancelled before the stream": MockProvider(error=ProviderError("boom"), ttft=10),
        "error mid-stream": MockProvider("x" * 40, chunks=10, chunk_delay=0.02, fail_after=3),
    }.get(how, MockProvider("x" * 40, chunks=10, chunk_delay=0.1))
    a = Pipeline(provider, one_slot(stores[0]))
    # Only the cancelled cases are meant to reach the deadline; the others get room for a
    # loaded machine (the consumer that closes early alone needs 0.2 s of chunk delays).
    with trio.move_on_after(0.25 if how.startswith("cancelled") else 10) as scope:
        try:
            async with a.stream(make_request()) as stream:
                count = 0
                async for _ in stream:
                    count += 1
                    if how == "consumer closes early" and count == 2:
                        break
        except (ProviderError, StreamError):
            pass
    assert scope.cancelled_caught == how.startswith("cancelled")
    assert provider.open_streams == 0
    # The other instance may take the one slot at once (it would get a 503 otherwise).
    await (await Pipeline(MockProvider(), one_slot(stores[1])).handle(make_request())).aclose()


def one_slot(store: Store) -> list[Middleware]:
    return [ConcurrencyLimiter(store, max_concurrency=1, reject=True)]


# -- cache ---------------------------------------------------------------------------------


def numbered(**options: Any) -> MockProvider:
    """A provider whose every answer is different: `answer 1`, `answer 2`, ..."""
    count = itertools.count(1)
    return MockProvider(handler=lambda request, ctx: f"answer {next(count)}", **options)


async def ask(pipeline: Pipeline) -> tuple[str, str | None]:
    ctx = Context()
    response = await pipeline.complete(make_request(), ctx)
    return response.text, ctx.response_headers.get("x-cache")


async def test_an_answer_cached_through_one_instance_is_a_hit_on_the_other(
    stores: tuple[Store, Store],
) -> None:
    provider = numbered()
    a, b = pipelines(stores, provider, lambda s: [Cache(s)])
    assert await ask(a) == ("answer 1", "miss")
    assert await ask(b) == ("answer 1", "hit")
    async with b.stream(make_request()) as stream:
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None  # the whole chunk sequence, usage included
    assert provider.calls == 1


async def test_identical_misses_on_two_instances_make_one_upstream_call(
    stores: tuple[Store, Store],
) -> None:
    provider = numbered(ttft=0.2)
    a, b = pipelines(stores, provider, lambda s: [Cache(s)])
    results: list[tuple[str, str | None]] = []

    async def one(pipeline: Pipeline) -> None:
        results.append(await ask(pipeline))

    async with trio.open_nursery() as nursery:
        for pipeline in (a, b, a, b, b):
            nursery.start_soon(one, pipeline)
    assert provider.calls == 1
    assert sorted(results) == [("answer 1", "hit")] * 4 + [("answer 1", "miss")]


# -- a Redis that goes away ----------------------------------------------------------------


def stateful(store: Store, on_error: Any) -> list[Middleware]:
    return [
        RateLimiter(store, requests_per_minute=3, on_error=on_error),
        ConcurrencyLimiter(store, max_concurrency=5, on_error=on_error),
        Cache(store, on_error=on_error),
    ]


async def test_while_redis_is_down_each_middleware_follows_on_error_then_recovers(
    redis: RedisServer,
) -> None:
    async with (
        RedisStore(redis.url, timeout=0.3) as open_store,
        RedisStore(redis.url, timeout=0.3) as closed_store,
    ):
        provider = numbered()
        fail_open = Pipeline(provider, stateful(open_store, "fail_open"))
        fail_closed = Pipeline(provider, stateful(closed_store, "fail_closed"))
        assert await ask(fail_open) == ("answer 1", "miss")
        redis.stop()
        for _ in range(5):  # more than the limit: nothing is counted while Redis is away
            ctx = Context()
            with trio.fail_after(5):
                await fail_open.complete(make_request(), ctx)
            assert ctx.store_errors == {
                "rate limiter": "fail_open",
                "concurrency limiter": "fail_open",
                "cache": "fail_open",
            }
        with (
            trio.fail_after(5),
            pytest.raises(UnavailableError, match="cannot reach its state store") as info,
        ):
            await fail_closed.complete(make_request(), Context())
        assert info.value.status == 503
        assert isinstance(info.value.__cause__, StoreError)
        redis.start()
        # Redis came back empty: the limit holds again from the next call on.
        answers = [await _admitted(fail_closed) for _ in range(4)]
        assert answers == [True, True, True, False]
        assert not await _admitted(fail_open)


async def _admitted(pipeline: Pipeline) -> bool:
    try:
        await pipeline.complete(make_request(), Context())
    except RateLimitError:
        return False
    return True
