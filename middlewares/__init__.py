"""Middlewares: auth, rate limiting, caching, logging, retries and more, one module each."""

from ._access_log import AccessLog, SecretRedactor, configure_logging
from ._fallback import Fallback
from ._metrics import Metrics, MetricsMiddleware
from ._retry import Retry
from ._timeout import Timeout

__all__ = [
    "AccessLog",
    "Fallback",
    "Metrics",
    "MetricsMiddleware",
    "Retry",
    "SecretRedactor",
    "Timeout",
    "configure_logging",
]
