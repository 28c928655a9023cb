"""A model's first deployment admission, sent with the request's admission batch.

With a store that sends calls when they are made (Redis), the deployments start their
first attempt's `admit` in the batch of the rate limiter, the concurrency limiter and the
cache (`Deployments.prepare`). What it took (a half-open probe, a request and tokens on
the deployment's own buckets) must be given back when no attempt comes for it: a cache
hit, a refusal by another check, a cancellation while the batch is in flight.

Times are real (Redis reads its own clock), so cooldowns are a fraction of a second.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
import trio

from benchmarks.redis_server import RedisServer
from middlewares import (
    Bucket,
    Cache,
    CircuitPolicy,
    ConcurrencyLimiter,
    Deployment,
    Deployments,
    MemoryStore,
    RateLimiter,
    RedisStore,
    Reservation,
    Store,
    Timeout,
)
from pipeline import (
    Context,
    Middleware,
    Pipeline,
    RateLimitError,
    Request,
    Route,
    Router,
)
from providers import MockProvider

from ..conftest import make_request

POLICY = CircuitPolicy(failures=1, window=60.0, cooldown=0.2)


@pytest.fixture
async def store(redis: RedisServer) -> AsyncIterator[RedisStore]:
    async with RedisStore(redis.url, timeout=2.0) as redis_store:
        yield redis_store


def pool(store: Store, *deployments: Deployment) -> Deployments:
    return Deployments("mock-1", deployments, store=store, policy=POLICY, routing="weighted")


def stack(
    pool: Deployments,
    store: Store,
    *,
    limiter_store: Store | None = None,
    rpm: int = 1000,
    more: Sequence[Middleware] = (),
) -> Pipeline:
    return Pipeline(
        Router({"mock-1": Route(pool, "mock-1")}),
        [
            RateLimiter(limiter_store or store, requests_per_minute=rpm, tokens_per_minute=10**6),
            ConcurrencyLimiter(limiter_store or store, per_key=10),
            Cache(store),
            *more,
        ],
    )


async def ask(pipeline: Pipeline, request: Request) -> str:
    stream = await pipeline.handle(request, Context(key_id="alice"))
    async with stream:
        return "".join([chunk.text async for chunk in stream])


async def open_elsewhere(store: Store, deployment: Deployment) -> None:
    """Open the deployment's circuit as another instance would: this one does not know."""
    change = await store.record(deployment.circuit, False, POLICY)
    assert change.after == "open"
    await trio.sleep(0.25)  # the cooldown ends: the next admission is the half-open probe


async def probing(store: Store, deployment: Deployment) -> bool:
    [state] = await store.circuit_states([deployment.circuit])
    return state.probing


async def room(store: Store, deployment: Deployment, requests: int) -> bool:
    """Whether the deployment's request bucket has room for `requests` more (then taken)."""
    assert deployment.requests_per_minute is not None
    bucket = Bucket(f"dep:req:{deployment.name}", deployment.requests_per_minute, 60.0, requests)
    reservation = await store.reserve([bucket])
    return reservation.granted


async def test_a_cache_hit_gives_back_the_half_open_probe_it_took(store: RedisStore) -> None:
    upstream = MockProvider("hi", chunks=2)
    deployment = Deployment(upstream, "m")
    pipeline = stack(pool(store, deployment), store)
    request = make_request("cached")
    assert await ask(pipeline, request) == "hi"  # stored
    await open_elsewhere(store, deployment)
    stream = await pipeline.handle(request, Context(key_id="alice"))
    # The admission went out with the lookup, before the hit was known: it took the probe.
    assert await probing(store, deployment)
    async with stream:
        assert "".join([chunk.text async for chunk in stream]) == "hi"
    assert upstream.calls == 1
    assert not await probing(store, deployment)
    # The probe is there for the next request that reaches the deployment.
    assert await ask(pipeline, make_request("new")) == "hi"
    assert upstream.calls == 2
    [state] = await store.circuit_states([deployment.circuit])
    assert (state.state, state.probing) == ("closed", False)


async def test_a_cache_hit_refunds_the_deployments_request(store: RedisStore) -> None:
    deployment = Deployment(MockProvider("hi", chunks=2), "m", requests_per_minute=2)
    pipeline = stack(pool(store, deployment), store)
    request = make_request("cached")
    assert await ask(pipeline, request) == "hi"  # 1 of 2
    for _ in range(3):
        assert await ask(pipeline, request) == "hi"  # hits: each refunded
    assert await room(store, deployment, 1)
    assert not await room(store, deployment, 1)


async def test_a_rate_limit_refusal_refunds_the_deployments_request(store: RedisStore) -> None:
    upstream = MockProvider("hi", chunks=2)
    deployment = Deployment(upstream, "m", requests_per_minute=2)
    pipeline = stack(pool(store, deployment), store, rpm=1)
    assert await ask(pipeline, make_request("first")) == "hi"  # 1 of 2
    before = store.statistics().commands
    with pytest.raises(RateLimitError, match="Rate limit reached: requests per minute"):
        await ask(pipeline, make_request("second"))
    # reserve, slot, lookup and the admission went out; the settle, release, unlock and
    # the admission's refund came back.
    assert store.statistics().commands - before >= 5
    assert upstream.calls == 1
    assert await room(store, deployment, 1)
    assert not await room(store, deployment, 1)


async def test_a_rate_limit_refusal_gives_back_the_half_open_probe(store: RedisStore) -> None:
    upstream = MockProvider("hi", chunks=2)
    deployment = Deployment(upstream, "m")
    pipeline = stack(pool(store, deployment), store, rpm=1)
    assert await ask(pipeline, make_request("first")) == "hi"
    await open_elsewhere(store, deployment)
    with pytest.raises(RateLimitError, match="Rate limit reached: requests per minute"):
        await ask(pipeline, make_request("second"))
    assert upstream.calls == 1
    assert not await probing(store, deployment)
    probe = await store.admit(deployment.circuit, [], probe_lease=5)
    assert probe.admitted
    assert probe.probe is not None


class SlowReserve(MemoryStore):
    """A memory store whose reservation waits: the request is cancelled there, while the
    deployment's admission (sent to Redis with the batch) is out."""

    async def reserve(self, buckets: Sequence[Bucket]) -> Reservation:
        await trio.sleep(1)
        return await super().reserve(buckets)


async def test_a_request_cancelled_in_the_batch_gives_back_the_admission(
    store: RedisStore,
) -> None:
    upstream = MockProvider("hi", chunks=2)
    deployment = Deployment(upstream, "m", requests_per_minute=1)
    pipeline = stack(pool(store, deployment), store, limiter_store=SlowReserve())
    await open_elsewhere(store, deployment)
    before = store.statistics().commands
    with trio.move_on_after(0.3) as scope:
        await ask(pipeline, make_request("cancelled"))
    assert scope.cancelled_caught
    assert upstream.calls == 0
    # The lookup and the admission went out; the unlock and the give-back came back.
    assert store.statistics().commands - before >= 4
    assert not await probing(store, deployment)
    assert await room(store, deployment, 1)


async def test_an_admission_refused_in_the_batch_moves_on_to_the_next_deployment(
    store: RedisStore,
) -> None:
    first = Deployment(MockProvider("first", chunks=1), "a", priority=1)
    second = Deployment(MockProvider("second", chunks=1), "b", priority=2)
    deployments = pool(store, first, second)
    pipeline = stack(deployments, store)
    # Open elsewhere, and not yet cooled down: the admission in the batch is refused.
    change = await store.record(first.circuit, False, POLICY)
    assert change.after == "open"
    ctx = Context(key_id="alice")
    stream = await pipeline.handle(make_request("q"), ctx)
    async with stream:
        assert "".join([chunk.text async for chunk in stream]) == "second"
    assert ctx.deployments_tried == [second.name]
    assert first.state == "open"  # learned from the refusal


async def test_the_probe_taken_in_the_batch_serves_the_first_attempt(store: RedisStore) -> None:
    upstream = MockProvider("hi", chunks=2)
    deployment = Deployment(upstream, "m", requests_per_minute=10)
    pipeline = stack(pool(store, deployment), store, more=[Timeout(first_token=5.0)])
    # Redis learns the scripts first (a script's first call is answered NOSCRIPT and sent
    # again): neither round trip is the request's.
    assert await ask(pipeline, make_request("zero")) == "hi"
    assert await ask(pipeline, make_request("zero")) == "hi"
    await open_elsewhere(store, deployment)
    before = store.statistics().writes
    seen: list[int] = []
    upstream_execute = upstream.execute

    async def execute(request: Request, ctx: Context) -> object:
        seen.append(store.statistics().writes - before)
        return await upstream_execute(request, ctx)

    upstream.execute = execute  # type: ignore[method-assign,assignment]
    assert await ask(pipeline, make_request("probe")) == "hi"
    assert seen == [1]  # one write before the provider: the batch, with the admission
    [state] = await store.circuit_states([deployment.circuit])
    assert (state.state, state.probing) == ("closed", False)
    # Each request that reached it was counted once on the deployment's bucket.
    assert await room(store, deployment, 8)
    assert not await room(store, deployment, 1)


async def test_a_probe_whose_lease_is_too_short_is_taken_anew(store: RedisStore) -> None:
    # The batch's probe is leased for AHEAD_PROBE_LEASE; an attempt allowed longer for its
    # first token gives it back and takes a probe leased long enough.
    upstream = MockProvider("hi", chunks=2)
    deployment = Deployment(upstream, "m")
    pipeline = stack(pool(store, deployment), store, more=[Timeout(first_token=1000.0)])
    await open_elsewhere(store, deployment)
    assert await ask(pipeline, make_request("probe")) == "hi"
    [state] = await store.circuit_states([deployment.circuit])
    assert (state.state, state.probing) == ("closed", False)
