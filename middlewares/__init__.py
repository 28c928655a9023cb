"""Middlewares: auth, rate limiting, caching, logging, retries and more, one module each."""

from ._access_log import AccessLog, SecretRedactor, configure_logging
from ._auth import ApiKey, Auth
from ._cache import Cache
from ._concurrency import ConcurrencyLimiter
from ._fallback import Fallback
from ._metrics import Metrics, MetricsMiddleware
from ._rate_limit import RateLimiter
from ._recommended import recommended_middlewares
from ._redis_store import RedisStore
from ._retry import Retry
from ._store import (
    Bucket,
    BucketState,
    MemoryStore,
    Reservation,
    Store,
    StoreError,
    StoreStatistics,
)
from ._timeout import Deadline, Timeout

__all__ = [
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
]
