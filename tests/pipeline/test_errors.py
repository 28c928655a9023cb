"""The error hierarchy: statuses, OpenAI error shape, retryability."""

from __future__ import annotations

import msgspec
import pytest

from pipeline import (
    AuthenticationError,
    ConfigError,
    GatewayTimeoutError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ProviderError,
    ProxyError,
    RateLimitError,
    StreamError,
    UnavailableError,
    ValidationError,
)


@pytest.mark.parametrize(
    ("error", "status", "retryable"),
    [
        (ConfigError("x"), 500, False),
        (ValidationError("x"), 400, False),
        (AuthenticationError("x"), 401, False),
        (PermissionDeniedError("x"), 403, False),
        (NotFoundError("x"), 404, False),
        (PayloadTooLargeError("x"), 413, False),
        (RateLimitError("x", retry_after=3), 429, True),
        (GatewayTimeoutError("x"), 504, True),
        (UnavailableError("x"), 503, True),
        (UnavailableError("x", status=502), 502, True),
        (StreamError("x"), 502, False),
    ],
)
def test_each_error_has_a_status_and_retryability(
    error: ProxyError, status: int, retryable: bool
) -> None:
    assert isinstance(error, ProxyError)
    assert error.status == status
    assert error.retryable is retryable


@pytest.mark.parametrize(
    ("upstream", "status", "retryable"),
    [
        (400, 400, False),
        (401, 502, False),
        (403, 502, False),
        (404, 404, False),
        (408, 408, True),
        (409, 409, True),
        (413, 413, False),
        (422, 422, False),
        (429, 429, True),
        (500, 502, True),
        (503, 503, True),
        (None, 502, True),
    ],
)
def test_provider_errors_map_upstream_status(
    upstream: int | None, status: int, retryable: bool
) -> None:
    error = ProviderError("upstream said no", upstream_status=upstream, provider="up")
    assert error.status == status
    assert error.retryable is retryable
    assert error.upstream_status == upstream


@pytest.mark.parametrize("upstream", [401, 403])
def test_the_upstream_refusing_our_credentials_is_not_the_clients_401(upstream: int) -> None:
    # The client's own key was fine; the proxy's key for the upstream was not.
    error = ProviderError("Incorrect API key provided", upstream_status=upstream)
    assert error.status == 502
    assert error.message == (
        f"The upstream rejected the proxy's credentials (HTTP {upstream}): "
        "Incorrect API key provided"
    )
    assert str(error) == error.message


def test_openai_error_shape() -> None:
    error = ValidationError("Expected `str`, got `int`", param="messages[0].content")
    expected = {
        "error": {
            "message": "Expected `str`, got `int`",
            "type": "invalid_request_error",
            "param": "messages[0].content",
            "code": None,
        }
    }
    assert error.to_dict() == expected
    assert msgspec.json.decode(error.to_json()) == expected


def test_rate_limit_error_carries_retry_after_and_code() -> None:
    error = RateLimitError("slow down", retry_after=12.5)
    assert error.retry_after == 12.5
    assert error.to_dict()["error"]["code"] == "rate_limit_exceeded"


def test_an_error_may_carry_response_headers() -> None:
    assert RateLimitError("x").headers == {}
    error = RateLimitError("slow down", retry_after=2, headers={"retry-after": "2"})
    assert error.headers == {"retry-after": "2"}
    assert ProviderError("x", upstream_status=500).headers == {}


def test_an_upstream_503_is_kept_and_429_or_503_always_say_when_to_come_back() -> None:
    unavailable = ProviderError("busy", upstream_status=503, retry_after=7)
    assert (unavailable.status, unavailable.retry_after) == (503, 7)
    assert "retry-after" not in unavailable.headers  # the server writes `retry_after`
    limited = ProviderError("slow down", upstream_status=429)
    assert limited.status == 429
    assert limited.retry_after is None  # the retry middleware keeps its own backoff
    assert limited.headers == {"retry-after": "1"}
    assert ProviderError("boom", upstream_status=500).status == 502
    assert ProviderError("boom", upstream_status=500).headers == {}
