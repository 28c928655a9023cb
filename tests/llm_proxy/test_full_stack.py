"""All nine middlewares, built from a configuration in the recommended order."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from llm_proxy import ProxyConfig, parse_config, recommended_middlewares
from middlewares import (
    AccessLog,
    Auth,
    Cache,
    ConcurrencyLimiter,
    Deadline,
    Fallback,
    MemoryStore,
    Metrics,
    MetricsMiddleware,
    RateLimiter,
    Retry,
    Timeout,
)
from pipeline import (
    AuthenticationError,
    Context,
    Pipeline,
    ProviderError,
    ProxyError,
    Route,
    Router,
)
from providers import MockProvider

from ..conftest import Lines, make_request
from ..helpers import assert_nothing_held

CONFIG = """
[[providers]]
name = "main"
kind = "mock"

[[providers]]
name = "spare"
kind = "mock"

[[models]]
name = "main"
provider = "main"
fallbacks = ["backup"]

[[models]]
name = "backup"
provider = "spare"

[[keys]]
id = "team-a"
key_env = "FULL_STACK_TEAM_A_KEY"
requests_per_minute = 100
max_concurrency = 4

[ratelimit]
tokens_per_minute = 100000

[cache]
enabled = true

[retry]
max_attempts = 2
base_delay = 0.1

[timeouts]
total = 60
first_token = 5
idle = 5
"""
KEY = "sk-full-stack-secret-0123456789"
HEADERS = {"authorization": f"Bearer {KEY}"}


@pytest.fixture
def config(monkeypatch: pytest.MonkeyPatch) -> ProxyConfig:
    monkeypatch.setenv("FULL_STACK_TEAM_A_KEY", KEY)
    return parse_config(CONFIG, "full.toml")


class Stack:
    def __init__(self, config: ProxyConfig, main: MockProvider, spare: MockProvider) -> None:
        self.store = MemoryStore()
        self.metrics = Metrics(models=["main", "backup"], key_ids=["team-a"])
        self.main, self.spare = main, spare
        router = Router({"main": Route(main, "main-up"), "backup": Route(spare, "backup-up")})
        chain = recommended_middlewares(config, store=self.store, metrics=self.metrics)
        self.pipeline = Pipeline(router, chain)

    def assert_nothing_held(self) -> None:
        assert any(isinstance(m, Cache) for m in self.pipeline.middlewares)
        assert_nothing_held(pipeline=self.pipeline, providers=[self.main, self.spare])

    def requests(self, status: int) -> float | None:
        labels = {"model": "main", "key_id": "team-a", "status": str(status), "api": "chat"}
        return self.metrics.registry.get_sample_value("llm_proxy_requests_total", labels)


def test_the_recommended_order(config: ProxyConfig) -> None:
    chain = recommended_middlewares(config, store=MemoryStore())
    assert [type(m) for m in chain] == [
        AccessLog,
        MetricsMiddleware,
        Deadline,
        Auth,
        RateLimiter,
        ConcurrencyLimiter,
        Cache,
        Retry,
        Fallback,
        Timeout,
    ]


def test_middlewares_with_nothing_to_do_are_left_out() -> None:
    chain = recommended_middlewares(parse_config(""), store=MemoryStore())
    assert [type(m) for m in chain] == [AccessLog, MetricsMiddleware, Deadline, Retry, Timeout]


async def test_a_miss_then_a_hit_through_every_middleware(
    config: ProxyConfig, lines: Lines, autojump_clock: trio.testing.MockClock
) -> None:
    stack = Stack(config, MockProvider("fresh answer", chunks=4), MockProvider())
    statuses = []
    for _ in range(2):
        ctx = Context(headers=HEADERS)
        answer = await stack.pipeline.complete(make_request(model="main"), ctx)
        assert answer.text == "fresh answer"
        statuses.append(ctx.cache_status)
        assert ctx.response_headers["x-ratelimit-limit-requests"] == "100"
        assert ctx.response_headers["x-cache"] == ctx.cache_status
    assert statuses == ["miss", "hit"]
    assert stack.main.calls == 1
    events = lines.events()
    assert [(e["cache"], e["status"], e["key_id"]) for e in events] == [
        ("miss", 200, "team-a"),
        ("hit", 200, "team-a"),
    ]
    assert (events[0]["provider"], events[0]["upstream_model"]) == ("mock", "main-up")
    assert stack.requests(200) == 2
    assert KEY not in lines.text
    stack.assert_nothing_held()


async def test_a_failing_model_falls_back_and_a_bad_key_never_reaches_the_upstream(
    config: ProxyConfig, lines: Lines, autojump_clock: trio.testing.MockClock
) -> None:
    down = ProviderError("main is down", upstream_status=503, provider="main")
    stack = Stack(config, MockProvider(error=down), MockProvider("from the spare"))
    ctx = Context(headers=HEADERS)
    answer = await stack.pipeline.complete(make_request(model="main"), ctx)
    assert answer.text == "from the spare"
    assert ctx.fallback == "backup"
    again = Context(headers=HEADERS)
    await stack.pipeline.complete(make_request(model="main"), again)
    assert again.cache_status == "miss"  # the backup's answer was not stored as main's
    with pytest.raises(AuthenticationError, match="Invalid API key"):
        await stack.pipeline.complete(
            make_request(model="main"), Context(headers={"authorization": "Bearer sk-wrong-key"})
        )
    assert (stack.main.calls, stack.spare.calls) == (2, 2)
    events = lines.events()
    assert [(e["status"], e["fallback"]) for e in events] == [
        (200, "backup"),
        (200, "backup"),
        (401, None),
    ]
    assert "sk-wrong-key" not in lines.text
    stack.assert_nothing_held()


async def test_a_slow_first_token_times_out_then_falls_back(
    config: ProxyConfig, lines: Lines, autojump_clock: trio.testing.MockClock
) -> None:
    stack = Stack(config, MockProvider(ttft=30), MockProvider("rescued"))
    start = trio.current_time()
    answer = await stack.pipeline.complete(make_request(model="main"), Context(headers=HEADERS))
    assert answer.text == "rescued"
    assert trio.current_time() - start == pytest.approx(5.0)
    stack.assert_nothing_held()


async def test_a_client_that_goes_away_mid_stream_releases_everything(
    config: ProxyConfig, lines: Lines, autojump_clock: trio.testing.MockClock
) -> None:
    stack = Stack(config, MockProvider(chunks=10, chunk_delay=1), MockProvider())
    received = 0
    with trio.move_on_after(3.5):
        async with stack.pipeline.stream(
            make_request(model="main"), Context(headers=HEADERS)
        ) as stream:
            async for _ in stream:
                received += 1
    assert received == 4
    stack.assert_nothing_held()
    assert stack.store.statistics().cache_entries == 0  # a cut-short answer is not cached
    (event,) = lines.events()
    assert (event["outcome"], event["status"], event["chunks"]) == ("cancelled", 499, 4)
    # Each request reserves about 1030 tokens (prompt estimate plus 1024 for the answer).
    # The cancelled one was settled down to the few it used, so after the next request's
    # own reservation about 1030 are gone, not about 2060.
    ctx = Context(headers=HEADERS)
    await stack.pipeline.complete(make_request(model="main"), ctx)
    assert 100000 - int(ctx.response_headers["x-ratelimit-remaining-tokens"]) < 1500


@pytest.mark.parametrize("waiting_for", ["a concurrency slot", "an identical request"])
async def test_waits_before_the_upstream_end_by_the_total_deadline(
    waiting_for: str, autojump_clock: trio.testing.MockClock
) -> None:
    limits = "[concurrency]\nmax_concurrency = 1\n" if waiting_for == "a concurrency slot" else ""
    config = parse_config(
        '[[providers]]\nname = "p"\nkind = "mock"\n[[models]]\nname = "main"\nprovider = "p"\n'
        f"{limits}[cache]\nenabled = true\n[retry]\nmax_attempts = 1\n[timeouts]\ntotal = 5\n"
    )
    provider = MockProvider(chunks=4, chunk_delay=3)
    pipeline = Pipeline(
        Router({"main": Route(provider, "main")}),
        recommended_middlewares(config, store=MemoryStore()),
    )
    holder = await pipeline.handle(make_request("held", model="main"))
    text = "other" if waiting_for == "a concurrency slot" else "held"
    if waiting_for == "a concurrency slot":
        message = r"Too many requests in flight after waiting 5\.0 s"
    else:
        message = r"did not finish before its deadline \(waiting for an identical request's answer"
    start = trio.current_time()
    with pytest.raises(ProxyError, match=message) as info:
        await pipeline.complete(make_request(text, model="main"))
    assert trio.current_time() - start == pytest.approx(5.0)
    assert info.value.status in (503, 504)
    await holder.aclose()
    assert provider.calls == 1
