"""Upstream errors: an error answer becomes a `ProviderError`, and no secret leaks into one.

`upstream_error` keeps the upstream's message, code and param (OpenAI's, Anthropic's and
the other usual error shapes, `error_fields`), trims it, and reads `Retry-After` (seconds
or an HTTP-date, `parse_retry_after`). Every text taken from an upstream or from an
exception passes through `redact`, which removes the API key however it was quoted
(`secret_forms`), before `trim` cuts it to length.
"""

from __future__ import annotations

import json
import math
import time
from email.utils import parsedate_to_datetime

import msgspec

from pipeline import GatewayTimeoutError, ProviderError

__all__ = [
    "MAX_ERROR_TEXT",
    "error_fields",
    "parse_retry_after",
    "redact",
    "secret_forms",
    "timeout_error",
    "trim",
    "upstream_error",
]

# How much of an upstream's error text (a body, an error event) an error message quotes.
MAX_ERROR_TEXT = 500

_any_decoder = msgspec.json.Decoder()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delay-seconds or an HTTP-date.

    Returns None when the header is absent or unreadable; a date in the past gives 0.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def secret_forms(secret: str | None) -> tuple[str, ...]:
    """The ways `secret` may appear in an error message, longest first.

    As it is, and as `repr` (of the text or of its bytes, as an HTTP library may quote a header) and
    JSON escape it: an upstream or an exception may quote it in any of these.
    """
    if not secret:
        return ()
    forms = {
        secret,
        repr(secret)[1:-1],
        repr(secret.encode())[2:-1],
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }
    return tuple(sorted(forms, key=len, reverse=True))


def redact(text: str, forms: tuple[str, ...]) -> str:
    """`text` with every form of a secret (`secret_forms`) replaced by `[redacted]`."""
    for form in forms:
        if form in text:
            text = text.replace(form, "[redacted]")
    return text


def trim(text: str) -> str:
    """`text` cut to `MAX_ERROR_TEXT` characters. Redact first: a secret cut in two by the
    limit would no longer be found, and its head would stay."""
    return text if len(text) <= MAX_ERROR_TEXT else text[:MAX_ERROR_TEXT] + "..."


def error_fields(body: bytes | str) -> tuple[str | None, str | None, str | None]:
    """Message, code and param from the usual error shapes, as far as they are present.

    Understands OpenAI's `{"error": {"message", "type", "code", "param"}}`, Anthropic's
    `{"type": "error", "error": {"type", "message"}}`, `{"error": "text"}`, and the
    `{"message": ...}` / `{"detail": ...}` of many other servers.
    """
    try:
        data = _any_decoder.decode(body)
    except msgspec.DecodeError:
        return None, None, None
    if not isinstance(data, dict):
        return None, None, None
    error = data.get("error")
    message = code = param = None
    if isinstance(error, dict):
        message = error.get("message")
        code = error.get("code") or error.get("type")
        param = error.get("param")
    elif isinstance(error, str):
        message = error
    for key in ("message", "detail"):
        if not isinstance(message, str) and isinstance(data.get(key), str):
            message = data[key]
    return (
        message if isinstance(message, str) else None,
        code if isinstance(code, str) else None,
        param if isinstance(param, str) else None,
    )


def upstream_error(
    status: int,
    body: bytes,
    *,
    provider: str,
    retry_after: str | None = None,
    secret: str | None = None,
) -> ProviderError:
    """The `ProviderError` for an upstream's error answer.

    The upstream's message (and code and param, when it gives them) are kept, so the
    client sees why the upstream refused; a body that is not a known error shape is quoted,
    and every message is trimmed to `MAX_ERROR_TEXT` characters. `secret` (the provider's
    API key) is never part of the message, even if the upstream echoed it.

    Args:
      status: the upstream's HTTP status.
      body: the upstream's response body.
      provider: the provider's name.
      retry_after: the upstream's `Retry-After` header, if any.
      secret: the API key to scrub from everything taken from the body.
    """
    forms = secret_forms(secret)
    message, code, param = error_fields(body)
    if not message:
        text = " ".join(redact(body.decode("utf-8", "replace"), forms).split())
        message = text or f"the upstream answered HTTP {status}"
    return ProviderError(
        trim(redact(message, forms)),
        upstream_status=status,
        provider=provider,
        code=redact(code, forms) if code else None,
        param=redact(param, forms) if param else None,
        retry_after=parse_retry_after(retry_after),
    )


def timeout_error(
    provider: str, message: str, forms: tuple[str, ...], *, retryable: bool = True
) -> GatewayTimeoutError:
    """The `GatewayTimeoutError` of provider `provider`, its message redacted."""
    return GatewayTimeoutError(
        redact(f"upstream `{provider}`: {message}", forms), retryable=retryable
    )
