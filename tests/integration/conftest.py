"""Fixtures for the integration tests: the fake LLM upstream, and providers pointed at it.

Everything runs over real HTTP on 127.0.0.1 with real time; each test starts its own fake
(hypercorn starts in well under a millisecond), so the tests cannot see each other's
requests or disconnects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest

from benchmarks.fake_upstream import FakeConfig, FakeUpstream
from providers import HTTPProvider, ProviderConfig

from ..llm_proxy.conftest import sdk, start_server
from ..providers.helpers import KINDS

# The server tests' fixtures, shared rather than copied: a proxy on a free port, the SDK.
__all__ = ["sdk", "start_server"]

KEY = "sk-fake-upstream-0123456789abcdef"
"""The key the fake requires; providers read it from `KEY_ENV`."""
KEY_ENV = "LLM_PROXY_TEST_UPSTREAM_KEY"
API_ROOTS = {"openai": "/v1", "anthropic": "", "completions": ""}
"""What each kind's `base_url` adds to the fake's URL."""

Connect = Callable[..., HTTPProvider]


@pytest.fixture
def fake_upstream_config() -> FakeConfig:
    """Here the fake upstream (the shared `fake_upstream` fixture) requires `KEY`."""
    return FakeConfig(api_key=KEY)


def knob_headers(knobs: Mapping[str, object]) -> dict[str, str]:
    """The `x-fake-*` headers that set the fake's knobs for a request."""
    return {"x-fake-" + name.replace("_", "-"): str(value) for name, value in knobs.items()}


@pytest.fixture
async def connect(
    fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Connect]:
    """`provider = connect(kind, key=True, knobs={...}, **settings)`: a provider for the fake.

    Built as a configuration would build it (`from_config(ProviderConfig(...))`), reading
    the key from the environment unless `key=False`. `knobs` become `x-fake-*` headers on
    every request it sends; `settings` are further `ProviderConfig` fields. Every provider
    made is closed when the test ends.
    """
    monkeypatch.setenv(KEY_ENV, KEY)
    made: list[HTTPProvider] = []

    def make(
        kind: str,
        *,
        key: bool = True,
        knobs: Mapping[str, object] | None = None,
        **settings: Any,
    ) -> HTTPProvider:
        config = ProviderConfig(
            name=f"fake-{kind}",
            kind=kind,
            base_url=fake_upstream.url + API_ROOTS[kind],
            api_key_env=KEY_ENV if key else None,
            headers=knob_headers(knobs or {}),
            **settings,
        )
        provider = KINDS[kind].from_config(config)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()
