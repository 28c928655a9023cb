"""Pin each package's public names: adding or removing one is a deliberate change."""

from __future__ import annotations

import llm_proxy
import middlewares
import pipeline
import providers

PIPELINE = {
    "NonNegInt", "Positive", "PositiveInt", "Section", "decode_section", "read_secret",
    "section_error", "API_NAMES", "Api", "Native",
    "ApiKey", "AudioPart", "AuthenticationError", "BaseProvider", "ChatCompletion", "Chunk",
    "ChunkChoice", "ChunkSource", "ConfigError", "ContentPart", "Context", "Delta", "FilePart",
    "FunctionCall", "FunctionCallDelta", "FunctionDef", "GatewayTimeoutError", "Handler",
    "ImagePart", "ImageURL", "Message", "Middleware", "NotFoundError", "Outcome",
    "PayloadTooLargeError", "PermissionDeniedError", "Pipeline", "Provider", "ProviderError",
    "ProxyError", "RateLimitError", "Request", "ResponseChoice", "ResponseMessage",
    "ResponseStream", "Route", "Router", "StreamEnd", "StreamLimits", "StreamError",
    "StreamOptions", "TextPart", "Tool", "ToolCall", "ToolCallDelta", "UnavailableError", "Usage",
    "ValidationError", "call_provider", "clip_text", "collect_chunks", "decode_request",
    "encode_request",
    "estimate_prompt_tokens", "estimate_tokens", "new_request_id",
}  # fmt: skip

PROVIDERS = {
    "AnthropicProvider", "AzureProvider", "GeminiProvider", "CompletionsProvider", "HTTPProvider",
    "MockProvider", "OpenAIProvider",
    "PROVIDER_KINDS", "PROVIDER_OPTIONS", "ProviderConfig", "SSEDecoder", "ServerSentEvent",
    "build_provider",
    # Writing a provider on the HTTP base:
    "EventTranslator", "NoOptions", "UpstreamCall", "UpstreamEventError", "decode_event",
    "error_fields", "parse_options", "parse_retry_after", "upstream_error",
}  # fmt: skip

MIDDLEWARES = {
    "AccessLog", "ApiKey", "Auth", "Bucket", "BucketState", "Cache", "CacheConfig",
    "ConcurrencyConfig", "ConcurrencyLimiter", "Deadline", "Fallback", "KeyConfig", "LogConfig",
    "MemoryStore", "Metrics", "MetricsMiddleware", "RateLimitConfig", "RateLimiter", "RedisStore",
    "Reservation", "Retry", "RetryConfig", "SecretRedactor", "Store", "StoreConfig", "StoreError",
    "Timeout", "TimeoutConfig", "configure_logging",
    "CacheStatistics", "ConcurrencyStatistics", "MemoryStoreStatistics", "RateLimitStatistics",
    "RedisStoreStatistics",
    "Admission", "CircuitChange", "CircuitPolicy", "CircuitState", "COOLING", "Deployment",
    "DeploymentConfig", "Deployments", "DeploymentStatus", "HealthChecks", "HealthConfig",
    "Routing",
}  # fmt: skip

LLM_PROXY = {
    "BUILTIN_MIDDLEWARES", "DEFAULT_CONFIG", "MetricsExporter", "MiddlewareConfig", "ModelConfig",
    "ModelsFor", "ProxyApp", "ProxyConfig", "ServerConfig", "Stack", "build_stack",
    "configure_process_logging", "default_config", "key_warnings", "load_config",
    "middleware_chain", "parse_config", "recommended_middlewares", "serve", "asgi_app",
    "DeploymentsExporter", "LiveStack",
}  # fmt: skip


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


def test_llm_proxy_public_api() -> None:
    check(llm_proxy, LLM_PROXY)


def test_the_admission_batch_hook_is_pinned() -> None:
    # A provider may join the request's admission batch (`Context.admitted`) with an
    # optional `prepare(request, ctx)`; a store says it sends calls together.
    import inspect

    for provider in (pipeline.Router, middlewares.Deployments):
        assert list(inspect.signature(provider.prepare).parameters) == ["self", "request", "ctx"]
    assert "admission_ahead" in pipeline.Context.__slots__
    assert pipeline.Context().admission_ahead is None
    assert middlewares.RedisStore("redis://127.0.0.1:1/0").batches_calls is True
    assert not hasattr(middlewares.MemoryStore, "batches_calls")
