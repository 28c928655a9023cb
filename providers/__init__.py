"""Providers: the upstream end of a pipeline.

`OpenAIProvider`, `AnthropicProvider`, `AzureProvider`, `GeminiProvider` and
`CompletionsProvider` talk HTTP to an upstream
API through the shared plumbing of `HTTPProvider`; `MockProvider` answers by itself;
`build_provider` makes any of them from a `[[providers]]` configuration section.

Writing a provider on the HTTP base takes `HTTPProvider` (`post`, `read_body`, `fetch`,
`stream_events`, `auth_headers`, `from_config`), an `EventTranslator` that turns each
`ServerSentEvent` into a `Chunk` (`decode_event` decodes an event's JSON and raises
`UpstreamEventError` for an error object), `upstream_error` / `error_fields` /
`parse_retry_after` for error answers, and `parse_options` / `NoOptions` for its
`options` table.
"""

from ._anthropic import AnthropicProvider
from ._azure import AzureProvider
from ._build import PROVIDER_KINDS, PROVIDER_OPTIONS, build_provider
from ._call import UpstreamCall
from ._completions import CompletionsProvider
from ._config import NoOptions, ProviderConfig, parse_options
from ._errors import error_fields, parse_retry_after, upstream_error
from ._events import EventTranslator, UpstreamEventError, decode_event
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
    "EventTranslator",
    "GeminiProvider",
    "HTTPProvider",
    "MockProvider",
    "NoOptions",
    "OpenAIProvider",
    "ProviderConfig",
    "SSEDecoder",
    "ServerSentEvent",
    "UpstreamCall",
    "UpstreamEventError",
    "build_provider",
    "decode_event",
    "error_fields",
    "parse_options",
    "parse_retry_after",
    "upstream_error",
]
