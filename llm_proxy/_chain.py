"""The middleware chain a configuration asks for: the built-ins in order, plus plugins.

`recommended_middlewares(config, store=...)` builds the built-in middlewares from their
sections; `[[middlewares]]` entries load your own by import path and place each relative to
a built-in one (`after = "auth"`), or last, just before the provider.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from middlewares import (
    AccessLog,
    Auth,
    Cache,
    ConcurrencyLimiter,
    Deadline,
    Fallback,
    Metrics,
    MetricsMiddleware,
    RateLimiter,
    Retry,
    Store,
    Timeout,
)
from pipeline import ConfigError, Middleware

from ._config import BUILTIN_MIDDLEWARES, MiddlewareConfig, ProxyConfig

__all__ = ["BUILTIN_MIDDLEWARES", "load_object", "middleware_chain", "recommended_middlewares"]


def _has_rate_limits(config: ProxyConfig) -> bool:
    limits = config.ratelimit
    return (
        any(
            value is not None
            for value in (
                limits.requests_per_minute,
                limits.tokens_per_minute,
                limits.global_requests_per_minute,
                limits.global_tokens_per_minute,
            )
        )
        or any(m.requests_per_minute or m.tokens_per_minute for m in config.models)
        or any(k.requests_per_minute or k.tokens_per_minute for k in config.keys)
    )


def _has_concurrency_limits(config: ProxyConfig) -> bool:
    concurrency = config.concurrency
    return (
        concurrency.max_concurrency is not None
        or concurrency.per_key is not None
        or any(k.max_concurrency for k in config.keys)
    )


def metrics_for(config: ProxyConfig) -> Metrics:
    """Metrics whose model and key id labels are bounded by the configured ones."""
    return Metrics(models=[m.name for m in config.models], key_ids=[k.id for k in config.keys])


def _builtins(
    config: ProxyConfig, store: Store, metrics: Metrics
) -> list[tuple[str, Middleware | None]]:
    """Every built-in middleware by name, None where the configuration has it do nothing."""
    on_error = config.store.on_error
    models = config.models
    rate_limiter = (
        RateLimiter.from_config(
            config.ratelimit,
            store=store,
            on_error=on_error,
            model_requests_per_minute={
                m.name: m.requests_per_minute for m in models if m.requests_per_minute
            },
            model_tokens_per_minute={
                m.name: m.tokens_per_minute for m in models if m.tokens_per_minute
            },
        )
        if _has_rate_limits(config)
        else None
    )
    return [
        ("access_log", AccessLog()),
        ("metrics", MetricsMiddleware(metrics)),
        ("deadline", Deadline(config.timeouts.total) if config.timeouts.total else None),
        ("auth", Auth.from_config(config.keys) if config.keys else None),
        ("rate_limit", rate_limiter),
        (
            "concurrency",
            # Deadline (above) sets ctx.deadline, which a slot's lease outlives.
            ConcurrencyLimiter.from_config(config.concurrency, store=store, on_error=on_error)
            if _has_concurrency_limits(config)
            else None,
        ),
        (
            "cache",
            Cache.from_config(config.cache, store=store, on_error=on_error)
            if config.cache.enabled
            else None,
        ),
        ("retry", Retry.from_config(config.retry) if config.retry.max_attempts > 1 else None),
        (
            "fallback",
            Fallback({m.name: m.fallbacks for m in models})
            if any(m.fallbacks for m in models)
            else None,
        ),
        ("timeout", Timeout.from_config(config.timeouts)),
    ]


def recommended_middlewares(
    config: ProxyConfig, *, store: Store, metrics: Metrics | None = None
) -> list[Middleware]:
    """The built-in middlewares a configuration asks for, outermost first.

    The order, and why:

    1. access log: first, so it sees every request, rejected and cached ones too;
    2. metrics: likewise, and it counts what the log writes;
    3. deadline: the total timeout starts now, so the waits below (for a concurrency slot,
       for an identical request's answer) end by it too;
    4. auth: nothing below runs for an unknown key, and the key's limits are known after it;
    5. rate limit: before the cache, so cache hits count against the request limit (their
       tokens are refunded);
    6. concurrency: a slot is only taken by admitted requests;
    7. cache: before retry, so a hit never waits on an upstream;
    8. retry, then fallback: each retry runs the whole fallback list again;
    9. timeout: last, so each attempt has its own first-token and idle limits and retry and
       fallback see its timeout before the first chunk.

    A middleware with nothing to do is left out: auth without `[[keys]]`, rate limiting and
    concurrency without any limit, the cache unless enabled, fallback without any fallbacks,
    retry with `max_attempts = 1`. Logging itself is configured by the caller
    (`configure_logging`), once per process.

    Args:
      config: the proxy's configuration.
      store: shared state for rate limits, concurrency slots and the cache.
      metrics: where the metrics middleware records (a new `Metrics` bounded by the
        configured models and keys by default); give the same one to the `/metrics` endpoint.
    """
    return middleware_chain(config, store=store, metrics=metrics, plugins=False)


def middleware_chain(
    config: ProxyConfig, *, store: Store, metrics: Metrics | None = None, plugins: bool = True
) -> list[Middleware]:
    """The built-in middlewares (`recommended_middlewares`) with `[[middlewares]]` placed in.

    A plugin with `after = "auth"` runs just after auth (it sees the request after auth
    did), one with `before = "cache"` just before the cache, and one with neither runs last,
    just before the provider. Positions name a built-in whether or not the configuration
    turns it on; plugins at the same position keep the order of the file.

    Raises:
      ConfigError: plugins cannot be imported, are not callable with their options, or name
        an unknown position; one line for each, ending with its key path
        (`- at `middlewares[0].use``); `param` is the first one's.
    """
    if metrics is None:
        metrics = metrics_for(config)
    slots: dict[str, tuple[list[Middleware], list[Middleware]]] = {
        name: ([], []) for name in BUILTIN_MIDDLEWARES
    }
    last: list[Middleware] = []
    problems: list[ConfigError] = []
    for i, entry in enumerate(config.middlewares if plugins else []):
        try:
            middleware = _plugin(entry, f"middlewares[{i}]")
            if entry.after is not None:
                slots[_position(entry.after, f"middlewares[{i}].after")][1].append(middleware)
            elif entry.before is not None:
                slots[_position(entry.before, f"middlewares[{i}].before")][0].append(middleware)
            else:
                last.append(middleware)
        except ConfigError as exc:
            problems.append(exc)
    if problems:
        lines = "\n".join(f"{problem.message} - at `{problem.param}`" for problem in problems)
        raise ConfigError(lines, param=problems[0].param)
    chain: list[Middleware] = []
    for name, builtin in _builtins(config, store, metrics):
        before, after = slots[name]
        chain.extend(before)
        if builtin is not None:
            chain.append(builtin)
        chain.extend(after)
    chain.extend(last)
    return chain


def _position(name: str, path: str) -> str:
    if name not in BUILTIN_MIDDLEWARES:
        valid = ", ".join(BUILTIN_MIDDLEWARES)
        raise ConfigError(f"no built-in middleware `{name}` (one of: {valid})", param=path)
    return name


def load_object(spec: str, path: str) -> Any:
    """The object an import path `package.module:name` names.

    Raises:
      ConfigError: `spec` has no colon, the module cannot be imported, or it has no such
        name; `param` is `path`.
    """
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ConfigError(
            f"`{spec}` is not an import path of the form `package.module:name`", param=path
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(f"cannot import `{module_name}`: {exc}", param=path) from None
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"`{module_name}` has no `{attribute}`", param=path) from None
    return target


def _plugin(entry: MiddlewareConfig, path: str) -> Middleware:
    factory = load_object(entry.use, f"{path}.use")
    if not callable(factory):
        raise ConfigError(f"`{entry.use}` is not callable", param=f"{path}.use")
    if entry.after is not None and entry.before is not None:
        raise ConfigError("give `after` or `before`, not both", param=path)
    if inspect.iscoroutinefunction(factory) and not entry.options:
        # `async def guard(request, ctx, call_next)` is a middleware already.
        return _check_middleware(factory, entry.use, f"{path}.use")
    _check_signature(factory, entry.options, entry.use, f"{path}.options")
    try:
        middleware: Any = factory(**entry.options)
    except ConfigError as exc:
        raise ConfigError(exc.message, param=f"{path}.options") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"`{entry.use}` refused its options: {exc}", param=f"{path}.options"
        ) from None
    if not callable(middleware):
        raise ConfigError(
            f"`{entry.use}` returned {type(middleware).__name__}, not a middleware",
            param=f"{path}.use",
        )
    return _check_middleware(middleware, entry.use, f"{path}.use")


def _check_signature(
    factory: Callable[..., Any], options: dict[str, Any], spec: str, path: str
) -> None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return  # a builtin or extension type without a signature: its call will tell
    try:
        signature.bind(**options)
    except TypeError as exc:
        raise ConfigError(f"`{spec}` does not take these options: {exc}", param=path) from None


def _check_middleware(middleware: Any, spec: str, path: str) -> Middleware:
    """A middleware is called as `(request, ctx, call_next)`; refuse anything else early."""
    try:
        signature = inspect.signature(middleware)
        signature.bind(None, None, None)
    except (TypeError, ValueError):
        raise ConfigError(
            f"`{spec}` gave a middleware that is not called as (request, ctx, call_next)",
            param=path,
        ) from None
    result: Middleware = middleware
    return result
