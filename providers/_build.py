"""Build a provider from its configuration section."""

from __future__ import annotations

import msgspec

from pipeline import ConfigError, Provider

from ._anthropic import AnthropicProvider
from ._azure import AzureProvider
from ._completions import CompletionsProvider
from ._config import ProviderConfig
from ._gemini import GeminiProvider
from ._http import HTTPProvider
from ._mock import MockOptions, MockProvider
from ._openai import OpenAIProvider

__all__ = ["PROVIDER_KINDS", "PROVIDER_OPTIONS", "build_provider"]

HTTP_KINDS: dict[str, type[HTTPProvider]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "completions": CompletionsProvider,
    "azure": AzureProvider,
    "gemini": GeminiProvider,
}

PROVIDER_KINDS = ("openai", "anthropic", "azure", "gemini", "completions", "mock")
"""The built-in values of a `[[providers]]` section's `kind`."""

PROVIDER_OPTIONS: dict[str, type[msgspec.Struct]] = {
    **{kind: cls.Options for kind, cls in HTTP_KINDS.items()},
    "mock": MockOptions,
}
"""The `options` table each built-in kind understands, as the struct it is checked against."""


def build_provider(config: ProviderConfig) -> Provider:
    """The provider a `[[providers]]` section describes, chosen by its `kind`.

    Args:
      config: the section.

    Raises:
      ConfigError: an unknown kind, or whatever the kind's `from_config` refuses (a missing
        key variable, an unknown option, an insecure URL).
    """
    if config.kind == "mock":
        return MockProvider.from_config(config)
    cls = HTTP_KINDS.get(config.kind)
    if cls is None:
        kinds = ", ".join(PROVIDER_KINDS)
        raise ConfigError(
            f"provider `{config.name}`: unknown kind `{config.kind}` (one of: {kinds}, or an "
            "import path `package.module:Class`)",
            param="kind",
        )
    return cls.from_config(config)
