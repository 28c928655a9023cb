"""build_provider: one configuration section in, the right provider out."""

from __future__ import annotations

from typing import Any

import pytest

from llm_proxy import parse_config
from pipeline import ConfigError, Context
from providers import (
    AnthropicProvider,
    CompletionsProvider,
    MockProvider,
    OpenAIProvider,
    ProviderConfig,
    build_provider,
)

from ..conftest import make_request


def section(kind: str, **fields: Any) -> ProviderConfig:
    return ProviderConfig(name=f"the-{kind}", kind=kind, **fields)


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("openai", OpenAIProvider),
        ("anthropic", AnthropicProvider),
        ("completions", CompletionsProvider),
    ],
)
async def test_each_http_kind_builds_its_provider(kind: str, cls: type) -> None:
    provider = build_provider(section(kind, base_url="http://127.0.0.1:9999", timeout=7.0))
    assert type(provider) is cls
    assert provider.name == f"the-{kind}"
    await provider.aclose()


def test_anthropic_options_reach_the_provider() -> None:
    provider = build_provider(
        section(
            "anthropic",
            base_url="http://localhost:1",
            options={"version": "2024-10-22", "max_tokens": 512},
        )
    )
    assert isinstance(provider, AnthropicProvider)
    assert (provider.version, provider.max_tokens) == ("2024-10-22", 512)


async def test_a_mock_is_built_from_its_options() -> None:
    provider = build_provider(
        section("mock", options={"text": "abcdef", "chunks": 3, "ttft": 0.0, "chunk_delay": 0.0})
    )
    assert isinstance(provider, MockProvider)
    assert provider.name == "the-mock"
    stream = await provider.execute(make_request(), Context())
    texts = [chunk.text async for chunk in stream if chunk.text]
    assert texts == ["ab", "cd", "ef"]


def test_a_mock_from_a_config_file() -> None:
    config = parse_config(
        b'[[providers]]\nname = "echoer"\nkind = "mock"\noptions = { echo = true, ttft = 0.5 }\n'
    )
    provider = MockProvider.from_config(config.providers[0])
    assert (provider.name, provider.echo, provider.ttft) == ("echoer", True, 0.5)


@pytest.mark.parametrize(
    ("options", "message", "param"),
    [
        ({"txt": "x"}, "unknown field `txt`", "options"),
        ({"chunks": "many"}, "Expected `int`, got `str`", "options.chunks"),
    ],
)
def test_bad_mock_options_are_config_errors(
    options: dict[str, Any], message: str, param: str
) -> None:
    with pytest.raises(ConfigError, match=f"provider `the-mock`: .*{message}") as info:
        build_provider(section("mock", options=options))
    assert info.value.param == param


def test_an_http_kind_without_base_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="needs a base_url"):
        build_provider(section("openai"))
