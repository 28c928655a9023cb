"""Providers: the upstream end of a pipeline.

`OpenAIProvider`, `AnthropicProvider`, `AzureProvider`, `GeminiProvider` and
`CompletionsProvider` talk HTTP to an upstream
API through the shared plumbing of `HTTPProvider`; `MockProvider` answers by itself;
`build_provider` makes any of them from a `[[providers]]` configuration section.
"""

from ._anthropic import AnthropicProvider
from ._azure import AzureProvider
from ._build import PROVIDER_KINDS, PROVIDER_OPTIONS, build_provider
from ._completions import CompletionsProvider
from ._config import ProviderConfig
from ._gemini import GeminiProvider
from ._http import HTTPProvider
from ._mock import MockProvider
from ._openai import OpenAIProvider
from ._sse import ServerSentEvent, SSEDecoder

__all__ = [
    "PROVIDER_KINDS",
    "PROVIDER_OPTIONS",
    "AnthropicProvider",
    "AzureProvider",
    "CompletionsProvider",
    "GeminiProvider",
    "HTTPProvider",
    "MockProvider",
    "OpenAIProvider",
    "ProviderConfig",
    "SSEDecoder",
    "ServerSentEvent",
    "build_provider",
]
