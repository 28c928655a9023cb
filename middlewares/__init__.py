"""Middlewares: auth, rate limiting, caching, logging, retries and more, one module each."""

from ._fallback import Fallback
from ._retry import Retry
from ._timeout import Timeout

__all__ = [
    "Fallback",
    "Retry",
    "Timeout",
]
