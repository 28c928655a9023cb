"""The circuit-breaker part of the store contract, held by `MemoryStore` and `RedisStore`.

Times are real (Redis reads its own clock), so cooldowns are a fraction of a second.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from benchmarks.redis_server import RedisServer
from middlewares import (
    Bucket,
    CircuitPolicy,
    Deployment,
    Deployments,
    MemoryStore,
    RedisStore,
    Store,
)
from pipeline import Context, Message, ProviderError, Request
from providers import MockProvider

POLICY = CircuitPolicy(failures=2, window=60.0, cooldown=0.3)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    server: RedisServer = request.getfixturevalue("redis")
    async with RedisStore(server.url, timeout=0.5) as redis_store:
        yield redis_store


async def test_failures_within_the_window_open_the_circuit(store: Store) -> None:
    first = await store.record("cb:a", False, POLICY)
    assert (first.before, first.after) == ("closed", "closed")
    second = await store.record("cb:a", False, POLICY)
    assert (second.before, second.after) == ("closed", "open")
    assert second.retry_after == pytest.approx(0.3, abs=0.05)
    refused = await store.admit("cb:a", [], probe_lease=5)
    assert not refused.admitted
    assert refused.refused == "open"
    assert refused.retry_after == pytest.approx(0.3, abs=0.05)
    [state] = await store.circuit_states(["cb:a"])
    assert state.state == "open"
    assert not state.probing


async def test_after_the_cooldown_one_probe_decides(store: Store) -> None:
    await store.record("cb:a", False, POLICY)
    await store.record("cb:a", False, POLICY)
    await trio.sleep(0.35)
    probe = await store.admit("cb:a", [], probe_lease=5)
    assert probe.admitted
    assert probe.probe is not None
    other = await store.admit("cb:a", [], probe_lease=5)
    assert not other.admitted
    assert other.refused == "probing"
    assert (await store.circuit_states(["cb:a"]))[0].probing
    closed = await store.record("cb:a", True, POLICY, probe=probe.probe)
    assert (closed.before, closed.after) == ("half_open", "closed")
    assert (await store.admit("cb:a", [], probe_lease=5)).admitted


async def test_a_failed_probe_opens_the_circuit_again(store: Store) -> None:
    await store.record("cb:a", False, POLICY)
    await store.record("cb:a", False, POLICY)
    await trio.sleep(0.35)
    probe = await store.admit("cb:a", [], probe_lease=5)
    change = await store.record("cb:a", False, POLICY, probe=probe.probe)
    assert (change.before, change.after) == ("half_open", "open")
    assert not (await store.admit("cb:a", [], probe_lease=5)).admitted


async def test_a_released_probe_lets_the_next_request_probe(store: Store) -> None:
    await store.record("cb:a", False, POLICY)
    await store.record("cb:a", False, POLICY)
    await trio.sleep(0.35)
    probe = await store.admit("cb:a", [], probe_lease=5)
    assert probe.probe is not None
    await store.release_probe("cb:a", probe.probe)
    again = await store.admit("cb:a", [], probe_lease=5)
    assert again.admitted
    assert again.probe is not None


async def test_a_probe_whose_lease_lapsed_is_taken_by_another(store: Store) -> None:
    await store.record("cb:a", False, POLICY)
    await store.record("cb:a", False, POLICY)
    await trio.sleep(0.35)
    assert (await store.admit("cb:a", [], probe_lease=0.1)).admitted
    await trio.sleep(0.15)
    assert (await store.admit("cb:a", [], probe_lease=5)).probe is not None


async def test_retry_after_cools_at_once_for_that_long(store: Store) -> None:
    change = await store.record("cb:a", False, POLICY, cool_for=0.6)
    assert change.after == "open"
    assert change.retry_after == pytest.approx(0.6, abs=0.05)
    # A shorter cooldown never cuts a longer one short.
    await store.record("cb:a", False, POLICY, cool_for=0.1)
    await trio.sleep(0.35)
    assert not (await store.admit("cb:a", [], probe_lease=5)).admitted


async def test_a_plain_success_does_not_close_an_open_circuit_but_a_check_does(
    store: Store,
) -> None:
    await store.record("cb:a", False, POLICY, cool_for=30)
    assert (await store.record("cb:a", True, POLICY)).after == "open"
    assert (await store.record("cb:a", True, POLICY, closes=True)).after == "closed"
    assert (await store.admit("cb:a", [], probe_lease=5)).admitted


async def test_admission_reserves_buckets_and_refuses_a_full_one(store: Store) -> None:
    bucket = Bucket("rl:dep", 2, 60.0, 1)
    assert (await store.admit("cb:a", [bucket], probe_lease=5)).admitted
    assert (await store.admit("cb:a", [bucket], probe_lease=5)).admitted
    full = await store.admit("cb:a", [bucket], probe_lease=5)
    assert not full.admitted
    assert full.refused == "rate_limited"
    assert 20 < full.retry_after <= 30


async def test_a_refused_reservation_gives_the_probe_back(store: Store) -> None:
    bucket = Bucket("rl:dep", 1, 60.0, 2)
    await store.record("cb:a", False, POLICY, cool_for=0.1)
    await trio.sleep(0.15)
    assert (await store.admit("cb:a", [bucket], probe_lease=5)).refused == "rate_limited"
    assert not (await store.circuit_states(["cb:a"]))[0].probing
    assert (await store.admit("cb:a", [], probe_lease=5)).probe is not None


async def test_circuits_are_independent_and_unknown_ones_closed(store: Store) -> None:
    await store.record("cb:a", False, POLICY, cool_for=30)
    states = await store.circuit_states(["cb:a", "cb:b"])
    assert [s.state for s in states] == ["open", "closed"]
    assert (await store.admit("cb:b", [], probe_lease=5)).admitted
    one = await store.record("cb:b", False, POLICY)
    assert one.after == "closed"
    assert (await store.circuit_states(["cb:b"]))[0].failures == 1


async def test_one_instances_failures_cool_the_deployment_for_the_other(
    redis: RedisServer,
) -> None:
    east = MockProvider(name="east", error=ProviderError("down", upstream_status=503))
    west = MockProvider(name="west")
    policy = CircuitPolicy(failures=2, window=60.0, cooldown=0.5)
    async with RedisStore(redis.url, timeout=0.5) as one, RedisStore(redis.url, timeout=0.5) as two:

        def instance(store: RedisStore) -> Deployments:
            deployments = [Deployment(east, "m", weight=1000), Deployment(west, "m")]
            return Deployments("gpt", deployments, store=store, policy=policy)

        first, second = instance(one), instance(two)
        request = Request(model="gpt", messages=[Message(role="user", content="hi")])
        for _ in range(2):
            with pytest.raises(ProviderError, match="down"):
                await first.execute(request, Context())
        # The second instance never saw east fail, yet sends it nothing while it rests.
        served = set()
        for _ in range(10):
            ctx = Context()
            await (await second.execute(request, ctx)).collect()
            served.add(ctx.deployment)
        assert served == {"west/m"}
        assert east.calls == 2
        assert [s.state for s in await second.statuses()] == ["open", "closed"]
        # After the cooldown the second instance probes east, and its success closes the
        # circuit for the first instance too.
        await trio.sleep(0.55)
        east.error = None
        probe = Context()
        await (await second.execute(request, probe)).collect()
        assert probe.deployment == "east/m"
        assert [s.state for s in await first.statuses()] == ["closed", "closed"]
