"""From configuration to a pipeline: the embedded default and mock provider options."""

from __future__ import annotations

import pytest

from llm_proxy import DEFAULT_CONFIG, build_stack, default_config, parse_config
from middlewares import (
    AccessLog,
    Cache,
    ConcurrencyLimiter,
    Deadline,
    MetricsMiddleware,
    RateLimiter,
    Retry,
    Timeout,
)
from pipeline import ConfigError, Context, Message, Request
from providers import MockProvider, ProviderConfig


def ask(model: str, text: str = "Hello") -> Request:
    return Request(model=model, messages=[Message(role="user", content=text)])


async def test_the_embedded_default_serves_mock_models(autojump_clock: object) -> None:
    config = default_config()
    stack = build_stack(config)

    async with stack.pipeline as pipeline:
        echo = await pipeline.complete(ask("mock-echo", "say it back"))
        slow = await pipeline.complete(ask("mock-slow"))

    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8080
    assert config.keys == []
    assert "mock-fast" in DEFAULT_CONFIG
    assert stack.models_for is not None
    assert stack.models_for(Context()) == ["mock-fast", "mock-slow", "mock-echo"]
    assert sorted(stack.providers) == ["mock-echo", "mock-fast", "mock-slow"]
    # The recommended chain; no keys, so no auth.
    assert [type(m) for m in stack.pipeline.middlewares] == [
        AccessLog,
        MetricsMiddleware,
        Deadline,
        RateLimiter,
        ConcurrencyLimiter,
        Cache,
        Retry,
        Timeout,
    ]
    assert stack.metrics is not None
    assert b"llm_proxy_requests_total" in stack.metrics(Context())[0]
    assert echo.text == "say it back"
    assert slow.text.startswith("Hello! This is the mock provider")


def test_mock_options() -> None:
    provider = MockProvider.from_config(
        ProviderConfig(
            name="m",
            kind="mock",
            options={"text": "hi", "echo": True, "chunks": 3, "ttft": 0.5, "chunk_delay": 0.1},
        )
    )

    assert (provider.name, provider.text, provider.echo) == ("m", "hi", True)
    assert (provider.chunks, provider.ttft, provider.chunk_delay) == (3, 0.5, 0.1)


@pytest.mark.parametrize(
    ("options", "message", "param"),
    [
        ({"chunkz": 3}, "unknown field `chunkz`", "options"),
        ({"ttft": -1}, "Expected `float` >= 0.0", "options.ttft"),
        ({"echo": "yes"}, "Expected `bool`, got `str`", "options.echo"),
    ],
)
def test_bad_mock_options(options: dict[str, object], message: str, param: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        MockProvider.from_config(ProviderConfig(name="m", kind="mock", options=options))

    assert raised.value.param == param


def test_build_errors_name_the_source_and_the_provider() -> None:
    config = parse_config(
        """
        [[providers]]
        name = "first"
        kind = "mock"
        [[providers]]
        name = "second"
        kind = "mock"
        options = { ttft = "soon" }
        [[models]]
        name = "m"
        provider = "first"
        """
    )

    with pytest.raises(ConfigError) as raised:
        build_stack(config, "proxy.toml")

    assert raised.value.message == (
        "proxy.toml: provider `second`: Expected `float`, got `str`"
        " - at `providers[1].options.ttft`"
    )
    assert raised.value.param == "providers[1].options.ttft"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            '[store]\nbackend = "redis"\nurl = "memcached://cache:11211"\n',
            "store url `memcached://cache:11211`: unknown scheme `memcached`: use redis://, "
            "rediss://, unix://, redis+cluster:// or redis+sentinel:// - at `store.url`",
        ),
        (
            '[[keys]]\nid = "k"\nkey_env = "TEST_PROXY_UNSET_KEY"\n',
            "the key `k` environment variable `TEST_PROXY_UNSET_KEY` is not set",
        ),
    ],
    ids=["store", "key"],
)
def test_middleware_build_errors_name_the_source(extra: str, message: str) -> None:
    config = parse_config(
        '[[providers]]\nname = "p"\nkind = "mock"\n[[models]]\nname = "m"\nprovider = "p"\n' + extra
    )

    with pytest.raises(ConfigError) as raised:
        build_stack(config, "proxy.toml")

    assert raised.value.message == f"proxy.toml: {message}"
