"""One error hierarchy for the whole proxy.

Every error knows the HTTP status it maps to, its OpenAI-style error `type`, whether a retry
or fallback may help (`retryable`), and for 429/503 how long to wait (`retry_after`). The
server turns any of them into `{"error": {"message", "type", "param", "code"}}`.

    ProxyError                      500 api_error
    ├── ConfigError                 500 config_error (raised at build time, not per request)
    ├── ValidationError             400 invalid_request_error (param names the field path)
    ├── AuthenticationError         401 authentication_error
    ├── PermissionDeniedError       403 permission_error
    ├── NotFoundError               404 not_found_error
    ├── PayloadTooLargeError        413 invalid_request_error
    ├── RateLimitError              429 rate_limit_error (retry_after)
    ├── ProviderError               upstream status (4xx kept but 401/403, 503 kept, other
    │                               5xx -> 502), retryable per status
    │   └── StreamError             502, the stream broke after its first chunk (never retried)
    ├── GatewayTimeoutError         504 timeout_error (retryable)
    └── UnavailableError            503 (or 502) unavailable_error (retryable, retry_after)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import msgspec

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "GatewayTimeoutError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ProviderError",
    "ProxyError",
    "RateLimitError",
    "StreamError",
    "UnavailableError",
    "ValidationError",
    "clip_text",
]


class _ErrorBody(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorBody


_encoder = msgspec.json.Encoder()


class ProxyError(Exception):
    """Base of every error the proxy raises on purpose.

    Args:
      message: what went wrong, safe to show to the client (never a secret).
      param: the request field the error is about, if any.
      code: a short machine-readable code (`invalid_api_key`, `rate_limit_exceeded`, ...).
      status: override the class's HTTP status.
      retryable: override the class's retryable flag.
      retry_after: seconds the client should wait before trying again.
      headers: HTTP headers the server sends with the error response (rate-limit state,
        `Retry-After`); never a secret.
    """

    status: int = 500
    type: ClassVar[str] = "api_error"
    default_code: ClassVar[str | None] = None
    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        if status is not None:
            self.status = status
        self.retryable = self.default_retryable if retryable is None else retryable
        self.retry_after = retry_after
        self.headers: dict[str, str] = dict(headers) if headers is not None else {}

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI error shape, as plain data."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_json(self) -> bytes:
        """The OpenAI error shape, encoded."""
        body = _ErrorBody(self.message, self.type, self.param, self.code)
        return _encoder.encode(_ErrorEnvelope(body))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status})"


class ConfigError(ProxyError):
    """The configuration is wrong; raised when a stack is built, with the offending key."""

    type = "config_error"


class ValidationError(ProxyError):
    """The request is malformed or a field has a wrong type or value."""

    status = 400
    type = "invalid_request_error"


class AuthenticationError(ProxyError):
    """No API key, or one the proxy does not know."""

    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(ProxyError):
    """The key is valid but may not do this (for example, use this model)."""

    status = 403
    type = "permission_error"
    default_code = "model_not_allowed"


class NotFoundError(ProxyError):
    """Unknown model or path."""

    status = 404
    type = "not_found_error"
    default_code = "model_not_found"


class PayloadTooLargeError(ProxyError):
    """The request body is larger than the server accepts."""

    status = 413
    type = "invalid_request_error"
    default_code = "payload_too_large"


class RateLimitError(ProxyError):
    """A request or token limit is exhausted; `retry_after` says for how long."""

    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"
    default_retryable = True


MAX_ECHO = 100
"""Most characters of a client-sent name (a model) that an error message or a log repeats."""


def clip_text(text: str, limit: int = MAX_ECHO) -> str:
    """`text` cut to `limit` characters and marked `...` when cut.

    For names a client sent (a model name may be 100 KB): messages and logs quote them so
    a reader can tell which it was, never whole.
    """
    return text if len(text) <= limit else text[:limit] + "..."


UPSTREAM_RETRY_AFTER = 1.0
"""Seconds a 429 or 503 from an upstream tells the client to wait when the upstream did not."""


class ProviderError(ProxyError):
    """The upstream answered with an error; its status and message are kept.

    Upstream 4xx statuses pass through unchanged, except 401 and 403: those refuse the
    proxy's own credentials for the upstream, not the client's, so they become 502 and the
    message says so. 503 stays 503 (the upstream is overloaded or down for a while: the
    client should come back, not report a broken gateway); other 5xx become 502 (the proxy
    is the gateway). Retryable unless told otherwise when the upstream status is 408, 409,
    429 or 5xx, or when there was no answer at all (connection refused or reset).

    A 429 or 503 always reaches the client with `Retry-After`: the upstream's (kept in
    `retry_after`) when it sent one, else the proxy's own estimate `UPSTREAM_RETRY_AFTER`
    (1 s, the shortest the header can say; the proxy cannot know the upstream's window),
    sent as a header only so that the retry middleware keeps its own shorter backoff.

    Args:
      upstream_status: the status the upstream returned, None if it never answered.
      provider: the provider's name.
    """

    type = "upstream_error"
    _RETRYABLE_STATUSES: ClassVar[frozenset[int]] = frozenset({408, 409, 429})
    _CREDENTIAL_STATUSES: ClassVar[frozenset[int]] = frozenset({401, 403})

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int | None = None,
        provider: str | None = None,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        if status is None:
            if upstream_status in self._CREDENTIAL_STATUSES:
                status = 502
                message = (
                    f"The upstream rejected the proxy's credentials (HTTP {upstream_status}): "
                    f"{message}"
                )
            elif upstream_status is not None and (
                400 <= upstream_status < 500 or upstream_status == 503
            ):
                status = upstream_status
            else:
                status = 502
        if retryable is None:
            retryable = (
                upstream_status is None
                or upstream_status >= 500
                or upstream_status in self._RETRYABLE_STATUSES
            )
        super().__init__(
            message,
            param=param,
            code=code,
            status=status,
            retryable=retryable,
            retry_after=retry_after,
        )
        self.upstream_status = upstream_status
        self.provider = provider
        if retry_after is None and status in (429, 503):
            # A header only: `retry_after` stays None, so the retry middleware keeps its own
            # backoff rather than taking the estimate for the upstream's word.
            self.headers["retry-after"] = str(math.ceil(UPSTREAM_RETRY_AFTER))


class StreamError(ProviderError):
    """The upstream's stream broke: malformed data, a dropped connection, no finish reason.

    Not retryable by default: once a chunk has reached the client nothing may be retried.
    A provider that sees the break before the first chunk may pass `retryable=True`.
    """

    default_code = "stream_error"

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int | None = None,
        provider: str | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(
            message,
            upstream_status=upstream_status,
            provider=provider,
            status=502,
            retryable=retryable,
        )


class GatewayTimeoutError(ProxyError):
    """A deadline passed: total, time to first token, or idle time between chunks."""

    status = 504
    type = "timeout_error"
    default_code = "timeout"
    default_retryable = True


class UnavailableError(ProxyError):
    """The proxy or its upstream cannot take the request now (overload, dead store)."""

    status = 503
    type = "unavailable_error"
    default_code = "unavailable"
    default_retryable = True
