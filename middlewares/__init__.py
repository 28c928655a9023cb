"""Middlewares: auth, rate limiting, caching, logging, retries and more, one module each."""

from pipeline import ApiKey

from ._access_log import AccessLog, LogConfig, SecretRedactor, configure_logging
from ._auth import Auth, KeyConfig
from ._cache import Cache, CacheConfig
from ._concurrency import ConcurrencyConfig, ConcurrencyLimiter
from ._fallback import Fallback
from ._metrics import Metrics, MetricsMiddleware
from ._rate_limit import RateLimitConfig, RateLimiter
from ._redis_store import RedisStore
from ._retry import Retry, RetryConfig
from ._store import (
    Bucket,
    BucketState,
    MemoryStore,
    Reservation,
    Store,
    StoreConfig,
    StoreError,
    StoreStatistics,
)
from ._timeout import Deadline, Timeout, TimeoutConfig

__all__ = [
    "AccessLog",
    "ApiKey",
    "Auth",
    "Bucket",
    "BucketState",
    "Cache",
    "CacheConfig",
    "ConcurrencyConfig",
    "ConcurrencyLimiter",
    "Deadline",
    "Fallback",
    "KeyConfig",
    "LogConfig",
    "MemoryStore",
    "Metrics",
    "MetricsMiddleware",
    "RateLimitConfig",
    "RateLimiter",
    "RedisStore",
    "Reservation",
    "Retry",
    "RetryConfig",
    "SecretRedactor",
    "Store",
    "StoreConfig",
    "StoreError",
    "StoreStatistics",
    "Timeout",
    "TimeoutConfig",
    "configure_logging",
]
