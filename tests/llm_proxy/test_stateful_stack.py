"""The stateful middlewares together, built from a configuration, in the recommended order."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from llm_proxy import ProxyConfig, parse_config
from middlewares import Auth, Cache, ConcurrencyLimiter, MemoryStore, RateLimiter
from pipeline import (
    AuthenticationError,
    Context,
    PermissionDeniedError,
    Pipeline,
    RateLimitError,
    UnavailableError,
)
from providers import MockProvider

from ..conftest import make_request
from ..helpers import assert_nothing_held

CONFIG = """
[[providers]]
name = "mock"
kind = "mock"

[[models]]
name = "mock-1"
provider = "mock"
requests_per_minute = 100

[[keys]]
id = "alice"
key_env = "STACK_TEST_ALICE_KEY"
models = ["mock-*"]
requests_per_minute = 4
max_concurrency = 1

[[keys]]
id = "bob"
key_sha256 = "%s"
models = ["other"]

[ratelimit]
tokens_per_minute = 10000

[concurrency]
max_concurrency = 10
reject = true

[cache]
enabled = true
ttl = 60
"""
ALICE = {"authorization": "Bearer sk-alice"}


def build(config: ProxyConfig, store: MemoryStore, provider: MockProvider) -> Pipeline:
    on_error = config.store.on_error
    return Pipeline(
        provider,
        [
            Auth.from_config(config.keys),
            RateLimiter.from_config(
                config.ratelimit,
                store=store,
                on_error=on_error,
                model_requests_per_minute={"mock-1": 100},
            ),
            ConcurrencyLimiter.from_config(config.concurrency, store=store, on_error=on_error),
            Cache.from_config(config.cache, store=store, on_error=on_error),
        ],
    )


@pytest.fixture
def config(monkeypatch: pytest.MonkeyPatch) -> ProxyConfig:
    monkeypatch.setenv("STACK_TEST_ALICE_KEY", "sk-alice")
    return parse_config(CONFIG % Auth.hash_key("sk-bob"), "stack.toml")


def assert_stack_holds_nothing(store: MemoryStore, pipeline: Pipeline) -> None:
    assert isinstance(pipeline.middlewares[-1], Cache)
    assert_nothing_held(pipeline=pipeline, store=store)


async def test_a_key_is_authenticated_limited_and_cached(
    config: ProxyConfig, autojump_clock: trio.testing.MockClock
) -> None:
    store = MemoryStore()
    provider = MockProvider("cached answer")
    pipeline = build(config, store, provider)

    with pytest.raises(AuthenticationError, match="No API key"):
        await pipeline.complete(make_request(), Context())
    with pytest.raises(PermissionDeniedError, match="may not use the model `mock-1`"):
        await pipeline.complete(make_request(), Context(headers={"x-api-key": "sk-bob"}))

    statuses = []
    for _ in range(4):
        ctx = Context(headers=ALICE)
        response = await pipeline.complete(make_request(), ctx)
        assert response.text == "cached answer"
        statuses.append(ctx.cache_status)
        assert ctx.key_id == "alice"
        assert ctx.response_headers["x-ratelimit-limit-requests"] == "4"
    assert statuses == ["miss", "hit", "hit", "hit"]
    assert provider.calls == 1
    ctx = Context(headers=ALICE)
    with pytest.raises(RateLimitError, match=r"requests per minute of this key \(limit 4,") as info:
        await pipeline.complete(make_request(), ctx)  # hits count as requests
    assert info.value.headers["x-ratelimit-remaining-requests"] == "0"
    assert ctx.response_headers["retry-after"] == "15"
    # Tokens: the one upstream call was charged, the hits were refunded.
    remaining = int(ctx.response_headers["x-ratelimit-remaining-tokens"])
    assert 10000 - remaining < 100
    assert_stack_holds_nothing(store, pipeline)


async def test_a_key_over_its_concurrency_is_shed_and_every_reservation_is_released(
    config: ProxyConfig, autojump_clock: trio.testing.MockClock
) -> None:
    store = MemoryStore()
    provider = MockProvider("x" * 80, chunks=8, chunk_delay=1)
    pipeline = build(config, store, provider)
    first = await pipeline.handle(make_request(), Context(headers=ALICE))
    with pytest.raises(UnavailableError, match="Too many requests in flight"):
        await pipeline.handle(make_request("other"), Context(headers=ALICE))
    with trio.move_on_after(2.5):  # the client goes away mid-stream
        async with first:
            async for _ in first:
                pass
    assert_nothing_held(providers=[provider])
    assert_stack_holds_nothing(store, pipeline)
    assert store.statistics().cache_entries == 0  # an answer cut short is not cached
    ctx = Context(headers=ALICE)
    await pipeline.complete(make_request(), ctx)
    assert ctx.cache_status == "miss"
    assert_stack_holds_nothing(store, pipeline)


async def test_concurrent_identical_requests_share_one_upstream_call(
    config: ProxyConfig, autojump_clock: trio.testing.MockClock
) -> None:
    config.concurrency.reject = False
    config.keys[0].max_concurrency = None
    config.keys[0].requests_per_minute = None
    # Each request reserves its estimate (about 1000 tokens) before the cache answers.
    config.ratelimit.tokens_per_minute = 50_000
    store = MemoryStore()
    provider = MockProvider("shared", ttft=1)
    pipeline = build(config, store, provider)
    texts: list[str] = []

    async def one() -> None:
        texts.append((await pipeline.complete(make_request(), Context(headers=ALICE))).text)

    async with trio.open_nursery() as nursery:
        for _ in range(30):
            nursery.start_soon(one)
    assert texts == ["shared"] * 30
    assert provider.calls == 1
    assert_stack_holds_nothing(store, pipeline)
