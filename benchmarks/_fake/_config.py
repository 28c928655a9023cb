"""The fake upstream's knobs, and how a request's headers override them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import msgspec

__all__ = [
    "FakeConfig",
    "KNOBS",
    "KNOB_HEADER_PREFIX",
    "KnobError",
    "config_from_options",
    "with_overrides",
]

KNOB_HEADER_PREFIX = "x-fake-"


class KnobError(ValueError):
    """A knob has a value the fake cannot use (from a header, the CLI or the constructor)."""


class FakeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the fake upstream answers: the server's defaults, overridable per request.

    A request overrides any knob except `models` and `record` with a header named after
    it: `x-fake-chunks: 50`, `x-fake-no-finish: true`; an empty value sets an optional
    knob to None. So one running server serves many test cases.

    A *chunk* below is one content delta (a piece of text, or of a tool call's arguments);
    an *event* is anything the stream writes: a role chunk, a delta, a ping, `[DONE]`.

    Args:
      text_length: characters of the deterministic answer (see `fake_text`).
      chunks: content deltas a stream splits the answer into (at most one per character).
      ttft: seconds before the first event of a stream, or before a whole answer's headers
        (which also wait `chunk_delay` for each further chunk, like a real model).
      chunk_delay: seconds between chunks.
      status: answer with this error status (400-599) instead of 200, in the API's error
        shape, at once and without delays.
      error_body: the exact body of error answers instead of the API-shaped one.
      retry_after: send `Retry-After` with error answers: a number of seconds, or text
        sent as it is (an HTTP-date such as `Wed, 21 Oct 2015 07:28:00 GMT`, or seconds).
      fail_first: with `status`, fail only the first this-many requests that carry this
        knob (counted per server, reset by `FakeUpstream.reset`), then answer normally.
      drop_after: close the connection mid-answer: a stream after this many events, a
        whole answer after its headers and this many bytes of its body. The client sees
        a broken body, never a clean end.
      no_finish: end the stream without a finish reason (nor usage); a whole answer gets a
        null finish reason.
      malformed_after: after this many chunks, write an event whose JSON is cut off; a
        whole answer's body is cut off instead.
      stream_error_after: after this many chunks, write the API's in-stream error event
        and end the stream there.
      byte_by_byte: write every byte of the body as its own send.
      api_key: require this key (`Authorization: Bearer`; Anthropic also takes
        `x-api-key`, and wants an `anthropic-version` header).
      tool_calls: when the request offers tools, call the first one (arguments made up
        from its JSON schema) instead of answering with text.
      models: what `GET /v1/models` lists.
      record: keep every request in `FakeUpstream.requests` (off for long benchmarks).
    """

    text_length: int = 200
    chunks: int = 10
    ttft: float = 0.0
    chunk_delay: float = 0.0
    status: int = 200
    error_body: str | None = None
    retry_after: int | str | None = None
    fail_first: int | None = None
    drop_after: int | None = None
    no_finish: bool = False
    malformed_after: int | None = None
    stream_error_after: int | None = None
    byte_by_byte: bool = False
    api_key: str | None = None
    tool_calls: bool = False
    models: tuple[str, ...] = ("fake-gpt", "fake-claude", "fake-completions")
    record: bool = True

    def __post_init__(self) -> None:
        if self.text_length < 0 or self.chunks < 1:
            raise KnobError("text_length must be >= 0 and chunks >= 1")
        if self.ttft < 0 or self.chunk_delay < 0:
            raise KnobError("ttft and chunk_delay must be >= 0")
        if self.status != 200 and not 400 <= self.status <= 599:
            raise KnobError("status must be 200 or an error status (400-599)")
        if self.fail_first is not None and self.status == 200:
            raise KnobError("fail_first needs an error status")
        if isinstance(self.retry_after, str) and not _is_retry_after(self.retry_after):
            raise KnobError("retry_after must be seconds or an HTTP-date")
        counts = (
            self.retry_after if isinstance(self.retry_after, int) else None,
            self.fail_first,
            self.drop_after,
            self.malformed_after,
            self.stream_error_after,
        )
        if any(count is not None and count < 0 for count in counts):
            raise KnobError("counts and retry_after must be >= 0")


def _is_retry_after(value: str) -> bool:
    """Whether text is a valid `Retry-After` value: delay-seconds or an HTTP-date."""
    if value.isascii() and value.isdigit():
        return True
    try:
        return parsedate_to_datetime(value).tzinfo is not None
    except (TypeError, ValueError, IndexError):
        return False


# Knobs that belong to the server, not to one request.
_SERVER_ONLY = frozenset({"models", "record"})
KNOBS = tuple(f for f in FakeConfig.__struct_fields__ if f not in _SERVER_ONLY)
_KNOB_BY_HEADER = {KNOB_HEADER_PREFIX + name.replace("_", "-"): name for name in KNOBS}


def with_overrides(config: FakeConfig, values: Iterable[tuple[str, str]]) -> FakeConfig:
    """The config with knobs replaced by `(header name, text value)` pairs.

    Pairs whose name does not start with `x-fake-` are ignored, so a request's whole
    header list can be passed. Values are text (`"50"`, `"true"`, `"0.5"`); an empty value
    sets the knob to None.

    Raises:
      KnobError: an unknown `x-fake-` header, or a value of the wrong type or range.
    """
    changes: dict[str, str | None] = {}
    for header, value in values:
        if not header.startswith(KNOB_HEADER_PREFIX):
            continue
        name = _KNOB_BY_HEADER.get(header)
        if name is None:
            raise KnobError(f"unknown knob header {header!r}")
        changes[name] = value or None
    if not changes:
        return config
    return _convert({**msgspec.structs.asdict(config), **changes})


def config_from_options(options: Mapping[str, object]) -> FakeConfig:
    """A config from knob names and values, text or typed (as the CLI gives them).

    A None value leaves the knob at its default.

    Raises:
      KnobError: an unknown knob, or a value of the wrong type or range.
    """
    return _convert({name: value for name, value in options.items() if value is not None})


def _convert(fields: dict[str, Any]) -> FakeConfig:
    try:
        return msgspec.convert(fields, FakeConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise KnobError(str(exc)) from None
