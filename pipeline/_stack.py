"""From configuration to a running stack: providers, the router, the middleware chain.

`build_stack(config)` is what `llm-proxy serve` and `llm-proxy check-config` run; a stack
built in code instead is served the same way (`serve(pipeline, ...)`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from ._config import ProviderConfig, ProxyConfig, parse_config
from ._context import Context
from ._errors import ConfigError
from ._pipeline import Middleware, Pipeline
from ._provider import Provider, Route, Router

__all__ = [
    "DEFAULT_CONFIG",
    "MetricsExporter",
    "ModelsFor",
    "Stack",
    "build_stack",
    "default_config",
]

ModelsFor = Callable[[Context], "Sequence[str] | Awaitable[Sequence[str]]"]
"""The model names the caller described by a context may use (`GET /v1/models`).

It may raise a `ProxyError` (an unknown key is a 401)."""

MetricsExporter = Callable[[], tuple[bytes, str]]
"""The current metrics as a body and its content type (`GET /metrics`)."""

DEFAULT_CONFIG = """\
# The embedded default of `llm-proxy serve`: mock models, no API key, no network.
# Copy it to a file, change it, and run `llm-proxy serve --config FILE`.

[server]
host = "127.0.0.1"
port = 8080

[log]
format = "console"

[[providers]]
name = "mock-fast"
kind = "mock"
options = { chunks = 8 }

[[providers]]
name = "mock-slow"
kind = "mock"
options = { chunks = 24, ttft = 0.5, chunk_delay = 0.05 }

[[providers]]
name = "mock-echo"
kind = "mock"
options = { echo = true, chunks = 4 }

[[models]]
name = "mock-fast"
provider = "mock-fast"

[[models]]
name = "mock-slow"
provider = "mock-slow"

[[models]]
name = "mock-echo"
provider = "mock-echo"
"""
"""The configuration `llm-proxy serve` runs without `--config` (TOML)."""


@dataclass
class Stack:
    """A proxy built from configuration: the pipeline and what the server asks of it.

    Attributes:
      pipeline: the middlewares in front of a `Router` over the providers.
      providers: the providers by their configured names (`check-config` validates each).
      models_for: the model names a caller may use; the server lists them at `/v1/models`.
      metrics: renders the metrics for `/metrics`; None serves a 404 there.
    """

    pipeline: Pipeline
    providers: dict[str, Provider] = field(default_factory=dict)
    models_for: ModelsFor | None = None
    metrics: MetricsExporter | None = None


def _build_provider(config: ProviderConfig) -> Provider:
    """The provider a `[[providers]]` section describes.

    Raises:
      ConfigError: the kind is not served by this build, or its settings are wrong.
    """
    if config.kind == "mock":
        from providers import MockProvider

        return MockProvider.from_config(config)
    raise ConfigError(f"provider kind `{config.kind}` is not available", param="kind")


def _build_middlewares(config: ProxyConfig) -> list[Middleware]:
    """The middleware chain `config` asks for, outermost first.

    This is the one place the chain is assembled. Its order is the recommended one:
    access log, metrics, authentication, rate limits, concurrency, cache, retry and
    fallback, timeout. The `middlewares` package provides none of them yet, so the chain
    is empty and the router answers directly.
    """
    return []


def build_stack(config: ProxyConfig, source: str = "config") -> Stack:
    """Build the providers, the router and the middleware chain that `config` describes.

    Args:
      config: a checked configuration (`load_config`, `parse_config`).
      source: how errors name the configuration (usually its file name).

    Raises:
      ConfigError: a provider cannot be built (an unknown option, a missing API key
        variable); the message names `source`, the provider and the key path.
    """
    providers: dict[str, Provider] = {}
    for i, section in enumerate(config.providers):
        try:
            providers[section.name] = _build_provider(section)
        except ConfigError as exc:
            path = f"providers[{i}].{exc.param}" if exc.param else f"providers[{i}]"
            raise ConfigError(
                f"{source}: provider `{section.name}`: {exc.message} - at `{path}`", param=path
            ) from None
    if not config.models:
        raise ConfigError(f"{source}: no models are configured - at `models`", param="models")
    router = Router({m.name: Route(providers[m.provider], m.upstream) for m in config.models})
    names = router.models

    def models_for(ctx: Context) -> list[str]:
        return names

    return Stack(Pipeline(router, _build_middlewares(config)), providers, models_for)


def default_config() -> ProxyConfig:
    """The embedded default configuration, decoded and checked."""
    return parse_config(DEFAULT_CONFIG, "<embedded default config>")
