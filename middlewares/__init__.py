"""Middlewares: auth, rate limiting, caching, logging, retries and more, one module each."""

from ._retry import Retry
from ._timeout import Timeout

__all__ = [
    "Retry",
    "Timeout",
]
