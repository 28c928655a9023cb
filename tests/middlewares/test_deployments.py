"""Deployments: routing, per-deployment limits and circuit breaking, on a virtual clock."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import trio
import trio.testing

from middlewares import (
    COOLING,
    Admission,
    CircuitPolicy,
    Deployment,
    Deployments,
    Fallback,
    MemoryStore,
    Metrics,
    Retry,
    StoreError,
    Timeout,
)
from pipeline import (
    Context,
    Message,
    Pipeline,
    ProviderError,
    RateLimitError,
    Request,
    Route,
    Router,
    StreamError,
    UnavailableError,
)
from providers import MockProvider

POLICY = CircuitPolicy(failures=3, window=60.0, cooldown=30.0)


def ask(model: str = "gpt", stream: bool = True) -> Request:
    return Request(model=model, messages=[Message(role="user", content="hi")], stream=stream)


def pool(
    *deployments: Deployment,
    routing: str = "weighted",
    store: MemoryStore | None = None,
    policy: CircuitPolicy | None = POLICY,
    metrics: Metrics | None = None,
    seed: int = 1,
) -> Deployments:
    return Deployments(
        "gpt",
        deployments,
        routing=routing,  # type: ignore[arg-type]
        store=store if store is not None else MemoryStore(),
        policy=policy,
        metrics=metrics,
        rng=random.Random(seed),
    )


async def served_by(provider: Deployments, request: Request | None = None) -> str:
    ctx = Context()
    stream = await provider.execute(request or ask(), ctx)
    await stream.collect()
    assert ctx.deployment is not None
    return ctx.deployment


def upstream_error(status: int, retry_after: float | None = None) -> ProviderError:
    return ProviderError(
        "upstream says no", upstream_status=status, provider="east", retry_after=retry_after
    )


# -- routing --------------------------------------------------------------------------------


async def test_weighted_routing_splits_traffic_by_weight() -> None:
    east, west = MockProvider(name="east"), MockProvider(name="west")
    gpt = pool(Deployment(east, "gpt-4o", weight=3), Deployment(west, "gpt-4o", weight=1))
    counts = Counter([await served_by(gpt) for _ in range(400)])
    assert 270 <= counts["east/gpt-4o"] <= 330
    assert counts["east/gpt-4o"] + counts["west/gpt-4o"] == 400


async def test_the_upstream_model_is_sent_and_recorded() -> None:
    east = MockProvider(name="east", record=True)
    gpt = pool(Deployment(east, "gpt-4o-2024"))
    ctx = Context()
    await (await gpt.execute(ask(), ctx)).collect()
    assert east.requests[0].model == "gpt-4o-2024"
    assert (ctx.provider, ctx.upstream_model, ctx.deployment) == (
        "east",
        "gpt-4o-2024",
        "east/gpt-4o-2024",
    )


async def test_least_busy_routing_sends_to_the_deployment_with_fewest_in_flight() -> None:
    east, west = MockProvider(name="east"), MockProvider(name="west")
    gpt = pool(Deployment(east, "m"), Deployment(west, "m"), routing="least_busy")
    first_ctx = Context()
    held = await gpt.execute(ask(), first_ctx)
    others = {await served_by(gpt) for _ in range(10)}
    assert others == {"west/m", "east/m"} - {first_ctx.deployment}
    await held.aclose()
    assert [d.in_flight for d in gpt.deployments] == [0, 0]


async def test_latency_routing_prefers_the_fastest_and_explores_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slow, fast = MockProvider(name="slow", ttft=0.5), MockProvider(name="fast", ttft=0.1)
    gpt = pool(Deployment(slow, "m"), Deployment(fast, "m"), routing="latency")
    gpt.exploration = 0.1
    counts = Counter([await served_by(gpt) for _ in range(300)])
    assert counts["fast/m"] > 240
    assert counts["slow/m"] >= 10  # measured at first, then explored now and then
    slow_ttft, fast_ttft = (d.ttft for d in gpt.deployments)
    assert slow_ttft == pytest.approx(0.5)
    assert fast_ttft == pytest.approx(0.1)


async def test_a_later_priority_is_used_only_when_no_earlier_one_can_take_it() -> None:
    east, spill = MockProvider(name="east"), MockProvider(name="spill")
    gpt = pool(Deployment(east, "m", requests_per_minute=3), Deployment(spill, "m", priority=2))
    served = [await served_by(gpt) for _ in range(5)]
    assert served == ["east/m"] * 3 + ["spill/m"] * 2
    assert spill.calls == 2
    assert east.calls == 3


async def test_a_deployment_at_its_limits_is_skipped_and_all_at_limits_is_a_429(
    autojump_clock: trio.testing.MockClock,
) -> None:
    east, west = MockProvider(name="east"), MockProvider(name="west")
    gpt = pool(
        Deployment(east, "m", requests_per_minute=2),
        Deployment(west, "m", tokens_per_minute=50),
    )
    big = Request(
        model="gpt", messages=[Message(role="user", content="hi")], max_tokens=60, stream=True
    )
    served = Counter([await served_by(gpt, big) for _ in range(3)])
    assert served == {"east/m": 2, "west/m": 1}
    with pytest.raises(RateLimitError, match="Every deployment of `gpt` is at its rate limit"):
        await gpt.execute(big, Context())
    assert east.calls == 2
    assert west.calls == 1
    await trio.sleep(60)
    assert await served_by(gpt, big) in ("east/m", "west/m")


async def test_token_reservations_settle_to_the_reported_usage() -> None:
    store = MemoryStore()
    east = MockProvider(name="east")
    gpt = pool(Deployment(east, "m", tokens_per_minute=10_000), store=store)
    ctx = Context()
    answer = await (await gpt.execute(ask(), ctx)).collect()
    assert answer.usage is not None
    level = store.statistics().levels["dep:tok:east/m"]
    assert level == pytest.approx(answer.usage.total_tokens, abs=0.5)


class AdmitFails(MemoryStore):
    """A store that cannot answer `admit` (as an unreachable Redis), and answers the rest."""

    async def admit(self, *args: object, **kwargs: object) -> Admission:
        raise StoreError("the store is down")


async def test_failing_open_on_admission_settles_nothing_it_did_not_charge() -> None:
    store = AdmitFails()
    gpt = pool(Deployment(MockProvider(name="east"), "m", tokens_per_minute=10_000), store=store)

    answer = await (await gpt.execute(ask(), Context())).collect()

    assert answer.usage is not None
    # Admitted without a reservation: no correction may land on the bucket either, or the
    # deployment would get capacity (or debt) it never used once the store is back.
    assert "dep:tok:east/m" not in store.statistics().levels


# -- circuit breaking -----------------------------------------------------------------------


async def test_failures_within_the_window_open_the_circuit_and_traffic_moves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    east = MockProvider(name="east", error=upstream_error(500))
    west = MockProvider(name="west")
    metrics = Metrics()
    gpt = pool(Deployment(east, "m", weight=1000), Deployment(west, "m"), metrics=metrics, seed=3)
    for _ in range(3):
        with pytest.raises(ProviderError, match="upstream says no"):
            await gpt.execute(ask(), Context())
    assert east.calls == 3
    assert {await served_by(gpt) for _ in range(20)} == {"west/m"}
    assert east.calls == 3
    [status, _] = await gpt.statuses()
    assert status.state == "open"
    assert status.cooldown_remaining == pytest.approx(30)
    text = metrics.render().decode()
    assert 'llm_proxy_deployment_circuit_state{deployment="east/m",model="gpt"} 1.0' in text
    assert 'llm_proxy_deployment_errors_total{deployment="east/m",model="gpt"} 3.0' in text
    transitions = (
        'deployment_circuit_transitions_total{deployment="east/m",model="gpt",state="open"}'
    )
    assert f"{transitions} 1.0" in text


async def test_after_the_cooldown_one_probe_closes_the_circuit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    east = MockProvider(name="east", error=upstream_error(503))
    gpt = pool(Deployment(east, "m"))
    for _ in range(3):
        with pytest.raises(ProviderError):
            await gpt.execute(ask(), Context())
    with pytest.raises(UnavailableError, match="cooling down") as refused:
        await gpt.execute(ask(), Context())
    assert refused.value.code == COOLING
    assert refused.value.retry_after == pytest.approx(30)
    assert not refused.value.retryable
    await trio.sleep(30)
    east.error = None
    probe_ctx = Context()
    probe = await gpt.execute(ask(), probe_ctx)
    # While the probe is out, nobody else is sent there.
    with pytest.raises(UnavailableError, match="cooling down"):
        await gpt.execute(ask(), Context())
    await probe.collect()
    assert (await gpt.statuses())[0].state == "closed"
    assert await served_by(gpt) == "east/m"


async def test_a_failed_probe_opens_the_circuit_for_another_cooldown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    east = MockProvider(name="east", error=upstream_error(502))
    gpt = pool(Deployment(east, "m"))
    for _ in range(3):
        with pytest.raises(ProviderError):
            await gpt.execute(ask(), Context())
    await trio.sleep(30)
    with pytest.raises(ProviderError):
        await gpt.execute(ask(), Context())
    assert east.calls == 4
    await trio.sleep(29)
    with pytest.raises(UnavailableError):
        await gpt.execute(ask(), Context())
    assert east.calls == 4


async def test_a_cancelled_probe_gives_its_slot_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    east = MockProvider(name="east", error=upstream_error(500))
    gpt = pool(Deployment(east, "m"))
    for _ in range(3):
        with pytest.raises(ProviderError):
            await gpt.execute(ask(), Context())
    await trio.sleep(30)
    east.error = None
    east.ttft = 10.0
    with trio.move_on_after(1):  # the client goes away before the first chunk
        stream = await gpt.execute(ask(), Context())
        async with stream:
            await stream.peek()
    status = (await gpt.statuses())[0]
    assert status.state == "half_open"
    assert not status.probing
    east.ttft = 0.0
    assert await served_by(gpt) == "east/m"
    assert (await gpt.statuses())[0].state == "closed"


async def test_a_429_with_retry_after_cools_the_deployment_for_that_long(
    autojump_clock: trio.testing.MockClock,
) -> None:
    east = MockProvider(name="east", error=upstream_error(429, retry_after=7))
    west = MockProvider(name="west")
    gpt = pool(Deployment(east, "m", weight=1000), Deployment(west, "m"), seed=3)
    ctx = Context()
    with pytest.raises(ProviderError):
        await gpt.execute(ask(), ctx)
    assert ctx.failover_ready
    assert {await served_by(gpt) for _ in range(10)} == {"west/m"}
    await trio.sleep(7)
    east.error = None
    assert await served_by(gpt) == "east/m"


async def test_client_errors_do_not_count_against_a_deployment() -> None:
    east = MockProvider(name="east", error=upstream_error(400))
    gpt = pool(Deployment(east, "m"))
    for _ in range(5):
        with pytest.raises(ProviderError):
            await gpt.execute(ask(), Context())
    assert (await gpt.statuses())[0].state == "closed"
    assert east.calls == 5


async def test_the_store_is_shared_by_every_pool_on_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    east = MockProvider(name="east", error=upstream_error(500))
    one, two = pool(Deployment(east, "m"), store=store), pool(Deployment(east, "m"), store=store)
    for _ in range(3):
        with pytest.raises(ProviderError):
            await one.execute(ask(), Context())
    with pytest.raises(UnavailableError, match="cooling down"):
        await two.execute(ask(), Context())
    assert east.calls == 3


# -- in a chain: retries, fallbacks, timeouts -----------------------------------------------


def chain(provider: Deployments, *, fallbacks: dict[str, list[str]] | None = None) -> Pipeline:
    routes = {provider.name: Route(provider, provider.name)}
    middlewares: list[object] = [Retry(max_attempts=3, rng=random.Random(0))]
    if fallbacks:
        middlewares.append(Fallback(fallbacks))
    middlewares.append(Timeout(first_token=5.0))
    return Pipeline(Router(routes), middlewares)  # type: ignore[arg-type]


async def test_a_retry_moves_to_another_deployment_without_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    east = MockProvider(name="east", error=upstream_error(429, retry_after=20))
    west = MockProvider(name="west")
    gpt = pool(Deployment(east, "m", weight=1000), Deployment(west, "m"), seed=3)
    ctx = Context()
    started = trio.current_time()
    await (await chain(gpt).handle(ask(), ctx)).collect()
    assert trio.current_time() - started < 0.01
    assert ctx.deployments_tried == ["east/m", "west/m"]
    assert ctx.deployment == "west/m"
    assert ctx.retries == 1


async def test_a_failure_after_the_first_chunk_is_not_moved_elsewhere() -> None:
    east = MockProvider(name="east", fail_after=2)
    west = MockProvider(name="west")
    gpt = pool(Deployment(east, "m", weight=1000), Deployment(west, "m"), seed=3)
    ctx = Context()
    stream = await chain(gpt).handle(ask(), ctx)
    with pytest.raises(StreamError, match="mock"):
        await stream.collect()
    assert ctx.deployments_tried == ["east/m"]
    assert west.calls == 0


async def test_a_hung_deployment_costs_one_timeout_per_cooldown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hung = MockProvider(name="hung", ttft=1_000.0)
    west = MockProvider(name="west")
    gpt = pool(
        Deployment(hung, "m", weight=1000),
        Deployment(west, "m"),
        policy=CircuitPolicy(failures=1, window=60.0, cooldown=30.0),
        seed=3,
    )
    pipeline = chain(gpt)

    async def timed() -> float:
        started = trio.current_time()
        await (await pipeline.handle(ask(), Context())).collect()
        return trio.current_time() - started

    assert await timed() == pytest.approx(5.0)  # the first-token timeout, then west
    assert [await timed() for _ in range(10)] == [0.0] * 10
    assert hung.calls == 1
    await trio.sleep(30)
    # Cooled: one probe waits out its timeout; the requests meanwhile go straight to west.
    durations: list[float] = []
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(lambda: _append(durations, timed()))
    assert sorted(durations) == [0.0, 0.0, 0.0, 0.0, pytest.approx(5.0)]
    assert hung.calls == 2


async def _append(into: list[float], value: object) -> None:
    into.append(await value)  # type: ignore[misc]


async def test_a_model_whose_only_deployment_rests_falls_back_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hung = MockProvider(name="hung", ttft=1_000.0)
    backup = MockProvider(name="backup")
    policy = CircuitPolicy(failures=1, window=60.0, cooldown=30.0)
    store = MemoryStore()
    primary = Deployments("gpt", [Deployment(hung, "m")], store=store, policy=policy)
    spare = Deployments("spare", [Deployment(backup, "m")], store=store, policy=policy)
    pipeline = Pipeline(
        Router({"gpt": Route(primary, "gpt"), "spare": Route(spare, "spare")}),
        [Retry(max_attempts=1), Fallback({"gpt": ["spare"]}), Timeout(first_token=5.0)],
    )
    for expected in (5.0, 0.0, 0.0):
        ctx = Context()
        started = trio.current_time()
        await (await pipeline.handle(ask(), ctx)).collect()
        assert trio.current_time() - started == pytest.approx(expected)
        assert ctx.fallback == "spare"
    assert hung.calls == 1
