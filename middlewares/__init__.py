"""Middlewares: auth, rate limiting, caching, logging, retries and more, one module each."""

from ._timeout import Timeout

__all__ = [
    "Timeout",
]
