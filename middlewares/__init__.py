"""Middlewares: auth, rate limiting, caching, logging, retries and more, one module each."""

from ._store import Bucket, BucketState, MemoryStore, Reservation, Store, StoreError

__all__ = ["Bucket", "BucketState", "MemoryStore", "Reservation", "Store", "StoreError"]
