"""Pin each package's public names: adding or removing one is a deliberate change."""

from __future__ import annotations

import middlewares
import pipeline
import providers

PIPELINE = {
    "CacheConfig", "ConcurrencyConfig", "KeyConfig", "LogConfig", "ModelConfig", "ProviderConfig",
    "ProxyConfig", "RateLimitConfig", "RetryConfig", "ServerConfig", "StoreConfig", "TimeoutConfig",
    "load_config", "parse_config", "read_secret",
    "DEFAULT_CONFIG", "MetricsExporter", "ModelsFor", "ProxyApp", "Stack", "build_stack",
    "default_config", "serve",
    "AudioPart", "AuthenticationError", "BaseProvider", "ChatCompletion", "Chunk", "ChunkChoice",
    "ChunkSource", "ConfigError", "ContentPart", "Context", "Delta", "FilePart", "FunctionCall",
    "FunctionCallDelta", "FunctionDef", "GatewayTimeoutError", "Handler", "ImagePart", "ImageURL",
    "Message", "Middleware", "NotFoundError", "Outcome", "PayloadTooLargeError",
    "PermissionDeniedError", "Pipeline", "Provider", "ProviderError", "ProxyError",
    "RateLimitError", "Request", "ResponseChoice", "ResponseMessage", "ResponseStream", "Route",
    "Router", "StreamEnd", "StreamLimits", "StreamError", "StreamOptions", "TextPart", "Tool",
    "ToolCall",
    "ToolCallDelta", "UnavailableError", "Usage", "ValidationError", "call_provider",
    "clip_text", "collect_chunks", "decode_request", "encode_request", "estimate_prompt_tokens",
    "estimate_tokens", "new_request_id",
}  # fmt: skip

PROVIDERS = {
    "AnthropicProvider", "CompletionsProvider", "HTTPProvider", "MockProvider", "OpenAIProvider",
    "SSEDecoder", "ServerSentEvent", "build_provider",
}  # fmt: skip

MIDDLEWARES = {
    "AccessLog",
    "ApiKey",
    "Auth",
    "Bucket",
    "BucketState",
    "Cache",
    "ConcurrencyLimiter",
    "Deadline",
    "Fallback",
    "MemoryStore",
    "Metrics",
    "MetricsMiddleware",
    "RateLimiter",
    "RedisStore",
    "Reservation",
    "Retry",
    "SecretRedactor",
    "Store",
    "StoreError",
    "StoreStatistics",
    "Timeout",
    "configure_logging",
    "recommended_middlewares",
}


def check(module: object, expected: set[str]) -> None:
    names = set(module.__all__)  # type: ignore[attr-defined]
    assert names == expected
    for name in names:
        assert getattr(module, name) is not None
        value = getattr(module, name)
        if hasattr(value, "__module__") and value.__module__.startswith(module.__name__):  # type: ignore[attr-defined]
            # Public names live in private modules and are re-exported from the package.
            assert value.__module__.split(".")[-1].startswith("_")


def test_pipeline_public_api() -> None:
    check(pipeline, PIPELINE)


def test_providers_public_api() -> None:
    check(providers, PROVIDERS)


def test_middlewares_public_api() -> None:
    check(middlewares, MIDDLEWARES)
