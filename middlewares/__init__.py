"""Middlewares: auth, rate limiting, caching, logging, retries and more, one module each."""

from pipeline import ApiKey

from ._access_log import AccessLog, LogConfig, SecretRedactor, configure_logging
from ._auth import Auth, KeyConfig
from ._cache import Cache, CacheConfig, CacheStatistics
from ._concurrency import ConcurrencyConfig, ConcurrencyLimiter, ConcurrencyStatistics
from ._deployments import (
    COOLING,
    Deployment,
    DeploymentConfig,
    Deployments,
    DeploymentStatus,
    HealthChecks,
    HealthConfig,
    Routing,
)
from ._fallback import Fallback
from ._memory_store import MemoryStore, MemoryStoreStatistics
from ._metrics import Metrics, MetricsMiddleware
from ._rate_limit import RateLimitConfig, RateLimiter, RateLimitStatistics
from ._redis_store import RedisStore, RedisStoreStatistics
from ._retry import Retry, RetryConfig
from ._store import (
    Admission,
    Bucket,
    BucketState,
    CircuitChange,
    CircuitPolicy,
    CircuitState,
    Reservation,
    Store,
    StoreConfig,
    StoreError,
)
from ._timeout import Deadline, Timeout, TimeoutConfig

__all__ = [
    "COOLING",
    "AccessLog",
    "Admission",
    "ApiKey",
    "Auth",
    "Bucket",
    "BucketState",
    "Cache",
    "CacheConfig",
    "CacheStatistics",
    "CircuitChange",
    "CircuitPolicy",
    "CircuitState",
    "ConcurrencyConfig",
    "ConcurrencyLimiter",
    "ConcurrencyStatistics",
    "Deadline",
    "Deployment",
    "DeploymentConfig",
    "DeploymentStatus",
    "Deployments",
    "Fallback",
    "HealthChecks",
    "HealthConfig",
    "KeyConfig",
    "LogConfig",
    "MemoryStore",
    "MemoryStoreStatistics",
    "Metrics",
    "MetricsMiddleware",
    "RateLimitConfig",
    "RateLimitStatistics",
    "RateLimiter",
    "RedisStore",
    "RedisStoreStatistics",
    "Reservation",
    "Retry",
    "RetryConfig",
    "Routing",
    "SecretRedactor",
    "Store",
    "StoreConfig",
    "StoreError",
    "Timeout",
    "TimeoutConfig",
    "configure_logging",
]
