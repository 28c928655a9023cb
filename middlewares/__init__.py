"""Middlewares: auth, rate limiting, caching, logging, retries and more, one module each."""

from ._auth import ApiKey, Auth
from ._cache import Cache
from ._concurrency import ConcurrencyLimiter
from ._rate_limit import RateLimiter
from ._store import Bucket, BucketState, MemoryStore, Reservation, Store, StoreError

__all__ = [
    "ApiKey",
    "Auth",
    "Bucket",
    "BucketState",
    "Cache",
    "ConcurrencyLimiter",
    "MemoryStore",
    "RateLimiter",
    "Reservation",
    "Store",
    "StoreError",
]
