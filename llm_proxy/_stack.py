"""From configuration to a running stack: providers, the router, the middleware chain.

`build_stack(config)` is what `llm-proxy serve` and `llm-proxy check-config` run; a stack
built in code instead is served the same way (`serve(pipeline, ...)`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec

from middlewares import (
    Auth,
    Deployment,
    Deployments,
    DeploymentStatus,
    HealthChecks,
    MemoryStore,
    Metrics,
    RedisStore,
    Store,
    configure_logging,
)
from pipeline import (
    ConfigError,
    Context,
    PermissionDeniedError,
    Pipeline,
    Provider,
    Route,
    Router,
)
from providers import ProviderConfig, build_provider

from ._chain import load_object, metrics_for, middleware_chain
from ._config import ProxyConfig, ServerConfig, parse_config

__all__ = [
    "DEFAULT_CONFIG",
    "DEPLOYMENTS_PATH",
    "DeploymentsExporter",
    "MetricsExporter",
    "ModelsFor",
    "Stack",
    "build_stack",
    "configure_process_logging",
    "default_config",
]

ModelsFor = Callable[[Context], "Sequence[str] | Awaitable[Sequence[str]]"]
"""The model names the caller described by a context may use (`GET /v1/models`).

It may raise a `ProxyError` (an unknown key is a 401)."""

DEPLOYMENTS_PATH = "/health/deployments"
"""Where the server lists each model's deployments and their circuits."""

DeploymentsExporter = Callable[[Context], Awaitable[bytes]]
"""Each model's deployments and their state as JSON (`GET /health/deployments`), for the
caller `ctx` describes; like `MetricsExporter` it may refuse a key that is not an admin's."""

MetricsExporter = Callable[[Context], tuple[bytes, str]]
"""The current metrics as a body and its content type (`GET /metrics`), for the caller
`ctx` describes; it may raise a `ProxyError` (with auth on, a key that is not an admin's
gets a 403)."""

DEFAULT_SOURCE = "<embedded default config>"
"""How messages name the embedded default configuration."""

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

# The recommended stack runs in full: limits per client (no keys, so per address-less
# `anonymous`), a cache, retries and timeouts. Add [[keys]] to turn authentication on.
[ratelimit]
requests_per_minute = 600
tokens_per_minute = 1000000

[concurrency]
max_concurrency = 256

[cache]
enabled = true
ttl = 300
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
      resources: what must be open while the stack serves, in the order to open it (a
        Redis store and its connections, active health checks); `running()` opens and
        closes them.
      deployments: lists each model's deployments and their state for
        `/health/deployments`; None serves a 404 there.
    """

    pipeline: Pipeline
    providers: dict[str, Provider] = field(default_factory=dict)
    models_for: ModelsFor | None = None
    metrics: MetricsExporter | None = None
    resources: list[AbstractAsyncContextManager[object]] = field(default_factory=list)
    deployments: DeploymentsExporter | None = None

    def serve_options(self, server: ServerConfig) -> dict[str, Any]:
        """The keyword arguments of `serve` for this stack under the `[server]` settings.

        One place for them, so one process and each worker process serve alike.
        """
        return {
            "models_for": self.models_for,
            "metrics": self.metrics,
            "deployments": self.deployments,
            "server": server,
        }

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Stack]:
        """Keep the resources open while the block runs: `async with stack.running():`.

        They are closed in the reverse order when it ends, after the server (which closes
        the pipeline) has stopped.
        """
        async with AsyncExitStack() as resources:
            for resource in self.resources:
                await resources.enter_async_context(resource)
            yield self


def build_stack(config: ProxyConfig, source: str = "config") -> Stack:
    """Build the providers, the router and the middleware chain that `config` describes.

    The chain is `middlewares.recommended_middlewares` (access log, metrics, auth, rate
    limits, concurrency, cache, retry, fallback, timeout, each when configured) over the
    store `[store]` names: the in-memory store, or a `RedisStore` shared by every instance
    that names the same Redis (in `resources`: serve the stack inside `stack.running()`).
    `/v1/models` lists the models the caller's key may use (all of them
    without `[[keys]]`), and `/metrics` renders the metrics middleware's registry.

    Args:
      config: a checked configuration (`load_config`, `parse_config`).
      source: how errors name the configuration (usually its file name).

    Raises:
      ConfigError: a provider or a middleware cannot be built (an unknown option, a
        missing API key variable, a malformed store URL); the message names `source` and,
        where there is one, the key path.
    """
    providers = _build_providers(config, source)
    if not config.models:
        raise ConfigError(f"{source}: no models are configured - at `models`", param="models")
    resources: list[AbstractAsyncContextManager[object]] = []
    try:
        store = _build_store(config, resources)
    except ConfigError as exc:
        where = f" - at `{exc.param}`" if exc.param else ""
        raise ConfigError(f"{source}: {exc.message}{where}", param=exc.param) from None
    metrics = metrics_for(config)
    pools = _build_deployments(config, providers, store, metrics)
    router = Router(
        {name: Route(pool, name) for name, pool in pools.items()}, providers=providers.values()
    )
    intervals = {
        p.name: p.health_check_interval
        for p in config.providers
        if p.health_check_interval is not None
    }
    if intervals:
        resources.append(HealthChecks(pools.values(), intervals))
    try:
        chain = middleware_chain(config, store=store, metrics=metrics)
    except ConfigError as exc:
        lines = "\n".join(f"{source}: {line}" for line in exc.message.splitlines())
        raise ConfigError(lines, param=exc.param) from None
    auth = next((m for m in chain if isinstance(m, Auth)), None)
    names = router.models

    def models_for(ctx: Context) -> list[str]:
        if auth is None:
            return names
        return auth.authenticate(ctx.headers).allowed_models(names)

    def admin_only(ctx: Context, path: str) -> None:
        if auth is not None and not auth.authenticate(ctx.headers).admin:
            raise PermissionDeniedError(
                f"Reading {path} needs a key with `admin = true`.", code="admin_required"
            )

    def render_metrics(ctx: Context) -> tuple[bytes, str]:
        # The metrics name key ids, models and their counts: with auth on, admins only.
        admin_only(ctx, "/metrics")
        return metrics.render(), metrics.content_type

    async def render_deployments(ctx: Context) -> bytes:
        admin_only(ctx, DEPLOYMENTS_PATH)
        listing = [
            _ModelDeployments(name, pool.routing, await pool.statuses())
            for name, pool in pools.items()
        ]
        return _encoder.encode(_DeploymentList(listing))

    return Stack(
        Pipeline(router, chain),
        providers,
        models_for,
        render_metrics,
        resources,
        render_deployments,
    )


class _ModelDeployments(msgspec.Struct):
    model: str
    routing: str
    deployments: list[DeploymentStatus]


class _DeploymentList(msgspec.Struct):
    data: list[_ModelDeployments]
    object: str = "list"


_encoder = msgspec.json.Encoder()


def _build_deployments(
    config: ProxyConfig, providers: dict[str, Provider], store: Store, metrics: Metrics
) -> dict[str, Deployments]:
    """Each model's deployments (a model with one `provider` has one), by model name."""
    policy = config.health.policy
    pools = {}
    for model in config.models:
        deployments = [
            Deployment(
                providers[d.provider],
                d.upstream_model or model.upstream,
                weight=d.weight,
                priority=d.priority,
                requests_per_minute=d.requests_per_minute,
                tokens_per_minute=d.tokens_per_minute,
            )
            for d in model.all_deployments
        ]
        pools[model.name] = Deployments(
            model.name,
            deployments,
            routing=model.routing,
            store=store,
            policy=policy,
            exploration=config.health.exploration,
            on_error=config.store.on_error,
            metrics=metrics,
        )
    return pools


def _build_providers(config: ProxyConfig, source: str) -> dict[str, Provider]:
    """Every provider by name; every one that fails is reported, not just the first.

    Raises:
      ConfigError: one line per provider that cannot be built, each naming `source`, the
        provider and its key path; `param` is the first one's.
    """
    providers: dict[str, Provider] = {}
    problems: list[ConfigError] = []
    for i, section in enumerate(config.providers):
        try:
            providers[section.name] = _build_provider(section)
        except ConfigError as exc:
            path = f"providers[{i}].{exc.param}" if exc.param else f"providers[{i}]"
            message = exc.message.removeprefix(f"provider `{section.name}`: ")
            problems.append(
                ConfigError(f"provider `{section.name}`: {message} - at `{path}`", param=path)
            )
    if problems:
        lines = "\n".join(f"{source}: {problem.message}" for problem in problems)
        # As before, the providers already built are dropped: none has connected yet.
        raise ConfigError(lines, param=problems[0].param)
    return providers


def _build_store(
    config: ProxyConfig, resources: list[AbstractAsyncContextManager[object]]
) -> Store:
    """The store `[store]` names; one that must be opened is added to `resources`."""
    if config.store.backend == "redis":
        store = RedisStore.from_config(config.store, cache_max_bytes=config.cache.max_bytes)
        resources.append(store)
        return store
    return MemoryStore(
        cache_max_entries=config.cache.max_entries, cache_max_bytes=config.cache.max_bytes
    )


def _build_provider(section: ProviderConfig) -> Provider:
    """A built-in provider by its `kind`, or your own by import path (`package.module:Name`).

    Your class is built by its `from_config(section)`, which gets the whole `[[providers]]`
    table (its own settings are in `section.options`).

    Raises:
      ConfigError: the class cannot be imported, has no `from_config`, its `from_config`
        refuses the section (a `ConfigError`, `TypeError` or `ValueError`), or what it
        builds is not a provider; `param` is the key path below the section.
    """
    if ":" not in section.kind:
        return build_provider(section)
    cls = load_object(section.kind, "kind")
    from_config = getattr(cls, "from_config", None)
    if not callable(from_config):
        raise ConfigError(
            f"provider `{section.name}`: `{section.kind}` has no `from_config(section)`",
            param="kind",
        )
    try:
        provider = from_config(section)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        # msgspec's ValidationError is a ValueError: the usual way to refuse `options`.
        raise ConfigError(
            f"provider `{section.name}`: `{section.kind}.from_config` refused the section: {exc}"
        ) from None
    if not callable(getattr(provider, "execute", None)):
        raise ConfigError(
            f"provider `{section.name}`: `{section.kind}.from_config` returned "
            f"{type(provider).__name__}, which has no `execute(request, ctx)`",
            param="kind",
        )
    result: Provider = provider
    return result


def configure_process_logging(config: ProxyConfig) -> None:
    """Structured logs to stderr (stdout is for the banner), with every secret redacted."""
    variables = [p.api_key_env for p in config.providers] + [k.key_env for k in config.keys]
    # Stripped, as `read_secret` strips them: that is the form that is sent and may be echoed.
    values = (os.environ.get(v, "").strip() for v in variables if v is not None)
    secrets = [value for value in values if value]
    configure_logging(config.log.format, config.log.level, secrets=secrets, file=sys.stderr)


def default_config() -> ProxyConfig:
    """The embedded default configuration, decoded and checked."""
    return parse_config(DEFAULT_CONFIG, DEFAULT_SOURCE)
