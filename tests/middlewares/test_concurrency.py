"""ConcurrencyLimiter: a slot per request, released on every path; waiting or shedding."""

from __future__ import annotations

import pytest
import structlog.testing
import trio
import trio.testing

from middlewares import (
    ApiKey,
    ConcurrencyConfig,
    ConcurrencyLimiter,
    ConcurrencyStatistics,
    MemoryStore,
)
from pipeline import Context, Pipeline, ProviderError, ResponseStream, StreamError, UnavailableError
from providers import MockProvider

from ..conftest import make_request
from ..helpers import assert_nothing_held
from .conftest import FlakyStore


def slow_provider(**options: object) -> MockProvider:
    return MockProvider("x" * 40, chunks=10, chunk_delay=1.0, **options)  # type: ignore[arg-type]


async def hold(pipeline: Pipeline, ctx: Context | None = None) -> ResponseStream:
    """Start a request and keep its stream (and so its slot) open."""
    return await pipeline.handle(make_request(), ctx or Context())


# -- releasing on every path (the reason this middleware exists) ---------------------------


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
async def test_the_slot_is_released_on_every_path(
    how: str, autojump_clock: trio.testing.MockClock
) -> None:
    store = MemoryStore()
    provider = {
        "success": MockProvider("x" * 40, chunks=3),
        "error before the stream": MockProvider(error=ProviderError("boom", upstream_status=500)),
        "cancelled before the stream": MockProvider(error=ProviderError("boom"), ttft=100),
        "error mid-stream": slow_provider(fail_after=3),
    }.get(how, slow_provider())
    limiter = ConcurrencyLimiter(store, max_concurrency=1, per_key=1, reject=True)
    pipeline = Pipeline(provider, [limiter])
    with trio.move_on_after(3.5) as scope:
        try:
            async with pipeline.stream(make_request()) as stream:
                count = 0
                async for _ in stream:
                    count += 1
                    if how == "consumer closes early" and count == 2:
                        break
        except (ProviderError, StreamError):
            pass
    assert scope.cancelled_caught == how.startswith("cancelled")
    assert_nothing_held(store=store, limiters=[limiter], providers=[provider])
    await (await hold(Pipeline(MockProvider(), [limiter]))).aclose()  # the slot is free


async def test_a_request_cancelled_while_waiting_holds_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    provider = slow_provider()
    pipeline = Pipeline(provider, [ConcurrencyLimiter(store, max_concurrency=1)])
    first = await hold(pipeline)
    with trio.move_on_after(5) as scope:
        await hold(pipeline)
    assert scope.cancelled_caught
    assert provider.calls == 1
    await first.aclose()
    assert_nothing_held(store=store)


# -- waiting for a slot --------------------------------------------------------------------


async def test_a_waiter_gets_the_slot_as_soon_as_it_is_released(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    pipeline = Pipeline(slow_provider(), [ConcurrencyLimiter(store, max_concurrency=2)])
    streams = [await hold(pipeline), await hold(pipeline)]
    admitted_at: list[float] = []
    start = trio.current_time()

    async def third() -> None:
        ctx = Context()
        async with await hold(pipeline, ctx):
            admitted_at.append(trio.current_time() - start)
            assert ctx.concurrency_wait == 7.25

    async with trio.open_nursery() as nursery:
        nursery.start_soon(third)
        await trio.sleep(7.25)
        assert admitted_at == []
        await streams[0].aclose()
    assert admitted_at == [7.25]
    await streams[1].aclose()
    assert_nothing_held(store=store)


async def test_of_100_concurrent_requests_no_more_than_the_limit_run_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = MockProvider("x" * 40, chunks=4, chunk_delay=0.1)
    store = MemoryStore()
    pipeline = Pipeline(provider, [ConcurrencyLimiter(store, max_concurrency=10, max_wait=60)])
    most = 0
    done = 0

    async def one() -> None:
        nonlocal most, done
        async with pipeline.stream(make_request()) as stream:
            async for _ in stream:
                most = max(most, provider.open_streams)
        done += 1

    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(one)
    assert done == 100
    assert most == 10
    assert_nothing_held(store=store)


async def test_waiting_gives_up_after_max_wait_with_503(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    pipeline = Pipeline(slow_provider(), [ConcurrencyLimiter(store, per_key=1, max_wait=3)])
    first = await hold(pipeline)
    start = trio.current_time()
    with pytest.raises(UnavailableError, match=r"after waiting 3\.0 s") as info:
        await hold(pipeline)
    assert trio.current_time() - start == pytest.approx(3)
    assert info.value.status == 503
    assert info.value.retry_after == 1.0
    assert info.value.headers == {"retry-after": "1"}
    await first.aclose()
    assert_nothing_held(store=store)


async def test_waiting_never_outlasts_the_request_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipeline = Pipeline(slow_provider(), [ConcurrencyLimiter(MemoryStore(), max_concurrency=1)])
    first = await hold(pipeline)
    start = trio.current_time()
    with pytest.raises(UnavailableError, match=r"in flight after waiting 2\.0 s"):
        await hold(pipeline, Context(deadline=start + 2))
    assert trio.current_time() - start == pytest.approx(2)
    await first.aclose()


async def test_with_reject_a_full_limiter_sheds_load_at_once() -> None:
    provider = slow_provider()
    limiter = ConcurrencyLimiter(MemoryStore(), max_concurrency=1, reject=True, retry_after=2.5)
    pipeline = Pipeline(provider, [limiter])
    first = await hold(pipeline)
    with pytest.raises(UnavailableError, match="Too many requests in flight;") as info:
        await hold(pipeline)
    assert info.value.code == "concurrency_limit_exceeded"
    assert info.value.headers == {"retry-after": "3"}
    assert provider.calls == 1
    await first.aclose()


async def test_limits_per_key_and_over_all_keys() -> None:
    limiter = ConcurrencyLimiter(MemoryStore(), max_concurrency=3, per_key=2, reject=True)
    pipeline = Pipeline(slow_provider(), [limiter])

    def as_key(key: ApiKey) -> Context:
        ctx = Context()
        ctx.key_id, ctx.key = key.id, key
        return ctx

    solo, shared = ApiKey("solo", max_concurrency=1), ApiKey("shared")
    held = [await hold(pipeline, as_key(solo))]
    with pytest.raises(UnavailableError, match="Too many requests in flight"):
        await hold(pipeline, as_key(solo))
    held += [await hold(pipeline, as_key(shared)), await hold(pipeline, as_key(shared))]
    with pytest.raises(UnavailableError, match="Too many requests in flight"):
        await hold(pipeline, Context())  # anonymous has room of its own, the proxy has none
    await held.pop().aclose()
    held.append(await hold(pipeline, Context()))
    for stream in held:
        await stream.aclose()


# -- leases --------------------------------------------------------------------------------


async def test_a_slot_left_by_a_dead_instance_lapses_after_its_lease(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    assert await store.acquire_slots({"cc:global": 1}, lease=20) is not None  # never released
    pipeline = Pipeline(MockProvider(), [ConcurrencyLimiter(store, max_concurrency=1)])
    start = trio.current_time()
    await pipeline.complete(make_request())
    assert 20 <= trio.current_time() - start <= 21  # noticed by polling, at most 1 s late
    assert_nothing_held(store=store)


async def test_a_long_deadline_takes_a_lease_that_outlasts_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = ConcurrencyLimiter(MemoryStore(), max_concurrency=1, reject=True, lease=60)
    pipeline = Pipeline(MockProvider(chunk_delay=100), [limiter])
    first = await hold(pipeline, Context(deadline=trio.current_time() + 1000))
    await trio.sleep(900)
    with pytest.raises(UnavailableError, match="Too many requests in flight"):
        await hold(pipeline)
    await first.aclose()


# -- configuration and store failures ------------------------------------------------------


async def test_from_config() -> None:
    config = ConcurrencyConfig(max_concurrency=7, per_key=2, reject=True, max_wait=4)
    limiter = ConcurrencyLimiter.from_config(
        config, store=MemoryStore(), on_error="fail_closed", lease=900
    )
    assert (limiter.max_concurrency, limiter.per_key, limiter.reject) == (7, 2, True)
    assert (limiter.max_wait, limiter.lease) == (4, 900)
    assert limiter.policy.on_error == "fail_closed"


async def test_a_failing_store_fails_open_and_says_so() -> None:
    provider = MockProvider()
    limiter = ConcurrencyLimiter(FlakyStore(), max_concurrency=1)
    with structlog.testing.capture_logs() as logs:
        ctx = Context()
        await Pipeline(provider, [limiter]).complete(make_request(), ctx)
        await Pipeline(provider, [limiter]).complete(make_request())
    assert provider.calls == 2
    assert ctx.store_errors == {"concurrency limiter": "fail_open"}
    assert [(e["event"], e["operation"]) for e in logs if e["log_level"] != "debug"] == [
        ("store_error", "acquire")
    ]


async def test_a_failing_store_fails_closed_with_503() -> None:
    provider = MockProvider()
    limiter = ConcurrencyLimiter(FlakyStore(), max_concurrency=1, on_error="fail_closed")
    with structlog.testing.capture_logs(), pytest.raises(UnavailableError, match="state store"):
        await Pipeline(provider, [limiter]).complete(make_request())
    assert provider.calls == 0


async def test_a_failed_release_is_logged_and_the_lease_cleans_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = FlakyStore(failing=False)
    limiter = ConcurrencyLimiter(store, max_concurrency=1, reject=True, lease=30)
    pipeline = Pipeline(MockProvider(), [limiter])
    with structlog.testing.capture_logs() as logs:
        stream = await hold(pipeline)
        store.failing = True
        await stream.aclose()
    assert [(e["event"], e["operation"]) for e in logs if e["log_level"] != "debug"] == [
        ("store_error", "release")
    ]
    store.failing = False
    with pytest.raises(UnavailableError, match="Too many requests in flight"):
        await hold(pipeline)
    await trio.sleep(30)
    await (await hold(pipeline)).aclose()


async def test_statistics_count_the_slots_held_and_the_requests_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = ConcurrencyLimiter(MemoryStore(), max_concurrency=1)
    pipeline = Pipeline(MockProvider(), [limiter])
    first = await hold(pipeline)
    assert limiter.statistics() == ConcurrencyStatistics(held=1, waiting=0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pipeline.complete, make_request())
        await trio.testing.wait_all_tasks_blocked()
        assert limiter.statistics() == ConcurrencyStatistics(held=1, waiting=1)
        await first.aclose()
    assert limiter.statistics() == ConcurrencyStatistics(held=0, waiting=0)
