"""Build a provider from its configuration section."""

from __future__ import annotations

import httpx

from pipeline import ConfigError, Provider, ProviderConfig

from ._anthropic import AnthropicProvider
from ._completions import CompletionsProvider
from ._http import HTTPProvider
from ._mock import MockProvider
from ._openai import OpenAIProvider

__all__ = ["build_provider"]

HTTP_KINDS: dict[str, type[HTTPProvider]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "completions": CompletionsProvider,
}


def build_provider(
    config: ProviderConfig, *, transport: httpx.AsyncBaseTransport | None = None
) -> Provider:
    """The provider a `[[providers]]` section describes, chosen by its `kind`.

    Args:
      config: the section.
      transport: an httpx transport for the HTTP kinds (tests); the mock ignores it.

    Raises:
      ConfigError: an unknown kind, or whatever the kind's `from_config` refuses (a missing
        key variable, an unknown option, an insecure URL).
    """
    if config.kind == "mock":
        return MockProvider.from_config(config)
    cls = HTTP_KINDS.get(config.kind)
    if cls is None:
        raise ConfigError(f"provider `{config.name}`: unknown kind `{config.kind}`", param="kind")
    return cls.from_config(config, transport=transport)
