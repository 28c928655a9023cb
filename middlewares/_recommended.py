"""The recommended middleware stack, in the recommended order, built from a configuration."""

from __future__ import annotations

from pipeline import Middleware, ProxyConfig

from ._access_log import AccessLog
from ._auth import Auth
from ._cache import Cache
from ._concurrency import ConcurrencyLimiter
from ._fallback import Fallback
from ._metrics import Metrics, MetricsMiddleware
from ._rate_limit import RateLimiter
from ._retry import Retry
from ._store import Store
from ._timeout import Deadline, Timeout

__all__ = ["recommended_middlewares"]


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


def recommended_middlewares(
    config: ProxyConfig, *, store: Store, metrics: Metrics | None = None
) -> list[Middleware]:
    """The middlewares a configuration asks for, outermost first.

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
    on_error = config.store.on_error
    if metrics is None:
        metrics = Metrics.from_config(config.models, config.keys)
    chain: list[Middleware] = [AccessLog(), MetricsMiddleware(metrics)]
    if config.timeouts.total is not None:
        chain.append(Deadline(config.timeouts.total))
    if config.keys:
        chain.append(Auth.from_config(config.keys))
    if _has_rate_limits(config):
        chain.append(
            RateLimiter.from_config(config.ratelimit, config.models, store=store, on_error=on_error)
        )
    if _has_concurrency_limits(config):
        # Deadline (above) sets ctx.deadline, which a slot's lease outlives.
        chain.append(
            ConcurrencyLimiter.from_config(config.concurrency, store=store, on_error=on_error)
        )
    if config.cache.enabled:
        chain.append(Cache.from_config(config.cache, store=store, on_error=on_error))
    if config.retry.max_attempts > 1:
        chain.append(Retry.from_config(config.retry))
    if any(model.fallbacks for model in config.models):
        chain.append(Fallback.from_config(config.models))
    chain.append(Timeout.from_config(config.timeouts))
    return chain
