"""Access log: one structured event per request, written when the request ends.

`configure_logging` sets up structlog for the process (JSON or console lines) with a
processor that redacts secrets from every event, and `AccessLog` is the middleware that
writes the per-request event. The event is built once, at the end: when the stream is
exhausted, fails, is closed early or cancelled, or when the request is rejected before a
stream exists.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import msgspec
import structlog
import trio
from structlog.typing import EventDict, WrappedLogger

from pipeline import (
    Context,
    Handler,
    Outcome,
    ProxyError,
    Request,
    ResponseStream,
    Section,
    StreamEnd,
    clip_text,
)

__all__ = ["AccessLog", "LogConfig", "SecretRedactor", "configure_logging"]


class LogConfig(Section):
    """The log: one event per request, to stderr, with every secret redacted."""

    format: Literal["json", "console"] = "json"
    """One JSON object per line, or aligned text for people."""
    level: Literal["debug", "info", "warning", "error"] = "info"
    """The least severe event written."""


REDACTED = "[REDACTED]"

CLIENT_CLOSED = 499
"""The status logged for a request the client abandoned (nginx's convention)."""

# Keys whose values are secrets whatever they look like, after lowercasing and turning `-`
# into `_`: `Authorization`, `x-api-key`, `openai_api_key`, `access_token`, `client_secret`,
# `Set-Cookie`... but not `key_id` or `prompt_tokens`.
_SECRET_KEY = re.compile(
    r"(?:^|_)(?:authorization|api_?key|key|password|passwd|secret|token|cookie|credentials?)$"
)

# Strings that look like credentials wherever they appear: `Bearer ...`/`Basic ...` header
# values, OpenAI and Anthropic secret keys (`sk-...`, `sk-ant-...`, `sk-proj-...`), Google
# API keys (`AIza...`).
_SECRET_PATTERNS = (
    r"(?i:\b(?:bearer|basic)\s+[A-Za-z0-9._~+/=-]+)",
    r"\bsk-[A-Za-z0-9_-]{8,}",
    r"\bAIza[0-9A-Za-z_-]{30,}",
)


_SCALARS = frozenset({type(None), bool, int, float})


@functools.lru_cache(maxsize=1024)
def _is_secret_key(key: str) -> bool:
    return _SECRET_KEY.search(key.lower().replace("-", "_")) is not None


@functools.lru_cache(maxsize=256)
def _secret_keys(keys: tuple[str, ...]) -> tuple[str, ...]:
    """The keys among `keys` that name secrets (events of one kind share their keys)."""
    return tuple(key for key in keys if _is_secret_key(key))


def _text(value: bytes | bytearray) -> str:
    return bytes(value).decode("utf-8", "replace")


class SecretRedactor:
    """A structlog processor that replaces secrets in an event with `[REDACTED]`.

    It walks the whole event, nested dicts, lists and tuples included, and never changes the
    objects it was given (a logged `ctx.headers` stays intact). It redacts

    - the value of any key that names a secret (`authorization`, `api_key`, `x-api-key`,
      `key`, `password`, `secret`, `token`, `cookie`, and names ending in them, in any case),
      also as the first item of a `(name, value)` pair such as a raw header;
    - any part of a string that looks like a credential: `Bearer ...`, `Basic ...`, `sk-...`
      (OpenAI, Anthropic), `AIza...` (Google);
    - any occurrence of a registered secret value (`add`), such as the configured client keys
      and the upstream API keys, in any string.

    Values that are not plain data (exceptions, custom objects) are logged as their `str()`,
    redacted like any string.

    Args:
      secrets: secret values to scrub from every string.
    """

    __slots__ = ("_known", "_pattern", "_secrets")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._pattern = re.compile("|".join(_SECRET_PATTERNS))
        self._known: re.Pattern[str] | None = None
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        """Register secret values to scrub from every string (empty strings are ignored)."""
        self._secrets.update(s for s in secrets if s)
        # Longest first, so a secret that contains another is scrubbed whole.
        known = [re.escape(s) for s in sorted(self._secrets, key=len, reverse=True)]
        self._pattern = re.compile("|".join([*known, *_SECRET_PATTERNS]))
        self._known = re.compile("|".join(known)) if known else None

    def _may_hold_secret(self, text: str) -> bool:
        """False when `text` surely holds no secret; much cheaper than searching for one.

        The credential patterns each start with a literal (`bearer`, `basic`, `sk-`,
        `AIza`) that a substring test finds faster than the regex's scan; registered
        secrets are one literal alternation.
        """
        if "sk-" in text or "AIza" in text:
            return True
        lower = text.lower()
        if "bearer" in lower or "basic" in lower:
            return True
        return self._known is not None and self._known.search(text) is not None

    def redact(self, text: str) -> str:
        """The text with every secret in it replaced."""
        return self._pattern.sub(REDACTED, text)

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        for key in _secret_keys(tuple(event_dict)):
            event_dict[key] = REDACTED
        # Top-level values are mostly strings and numbers (this runs once per request for
        # the access log): one search over all the strings finds most events clean, and only
        # an event with a match pays for a substitution in each.
        # One pass sorts the values: strings, scalars, and the rest (walked below).
        strings: list[str] = []
        nested: list[str] = []
        for key, value in event_dict.items():
            kind = type(value)
            if kind is str:
                strings.append(value)
            elif kind not in _SCALARS:
                nested.append(key)
        if strings and self._may_hold_secret("\n".join(strings)):
            sub = self._pattern.sub
            for key, value in event_dict.items():
                if type(value) is str:
                    event_dict[key] = sub(REDACTED, value)
        for key in nested:
            event_dict[key] = self._value(event_dict[key])
        return event_dict

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._pattern.sub(REDACTED, value)
        if value is None or isinstance(value, int | float):
            return value
        if isinstance(value, Mapping):
            return {
                name: REDACTED if _is_secret_key(name) else self._value(item)
                for name, item in ((self._name(k), v) for k, v in value.items())
            }
        if isinstance(value, list | tuple | set | frozenset):
            items = list(value)
            if len(items) == 2 and isinstance(items[0], str | bytes):
                name = self._name(items[0])
                if _is_secret_key(name):
                    return [name, REDACTED]
            return [self._value(item) for item in items]
        if isinstance(value, bytes | bytearray):
            return self._pattern.sub(REDACTED, _text(value))
        return self._pattern.sub(REDACTED, str(value))

    def _name(self, key: object) -> str:
        if isinstance(key, str):
            return key
        if isinstance(key, bytes | bytearray):
            return _text(key)
        return str(key)


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

_json = msgspec.json.Encoder()


_LEVEL_NAMES = {"warn": "warning", "exception": "error"}


class _JsonLine:
    """The JSON format's processors in one: level, UTC timestamp, exception text, redaction,
    then one msgspec-encoded line.

    The access log writes one event per request, so this is on every request's path; one
    call instead of a chain of five halves what structlog spends on the event.
    """

    __slots__ = ("_redactor",)

    def __init__(self, redactor: SecretRedactor) -> None:
        self._redactor = redactor

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        event_dict["level"] = _LEVEL_NAMES.get(method_name, method_name)
        event_dict["timestamp"] = _timestamp()
        if "exc_info" in event_dict:
            event_dict = structlog.processors.format_exc_info(logger, method_name, event_dict)
        return _json.encode(self._redactor(logger, method_name, event_dict)).decode()


class _Clock:
    """`datetime.now(UTC).isoformat()` with `Z` for `+00:00`, its date and time of day
    formatted once per second (a `datetime` and its `isoformat` per line cost about 1 us)."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self) -> str:
        micros = time.time_ns() // 1000
        second, fraction = divmod(micros, 1_000_000)
        if second != self._second:
            self._prefix = datetime.fromtimestamp(second, UTC).isoformat()[:19]
            self._second = second
        # `isoformat` leaves the fraction out when it is zero; so do we.
        return f"{self._prefix}.{fraction:06d}Z" if fraction else f"{self._prefix}Z"


_timestamp = _Clock()


class _LineWriter:
    """structlog's `PrintLogger` with one write and one flush per line instead of `print`'s
    two writes (the access log writes a line per request)."""

    __slots__ = ("_file", "_lock")

    def __init__(self, file: TextIO) -> None:
        self._file = file
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            self._file.write(message + "\n")
            self._file.flush()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _LineWriterFactory:
    __slots__ = ("_writer",)

    def __init__(self, file: TextIO) -> None:
        self._writer = _LineWriter(file)

    def __call__(self, *args: Any) -> _LineWriter:
        return self._writer


def configure_logging(
    format: Literal["json", "console"] = "json",
    level: Literal["debug", "info", "warning", "error"] = "info",
    *,
    secrets: Iterable[str] = (),
    file: TextIO | None = None,
) -> SecretRedactor:
    """Configure structlog for the whole process: one line per event, secrets redacted.

    Every event gets its level and an ISO timestamp (UTC); exceptions are rendered as text;
    then a `SecretRedactor` scrubs the event; then it is rendered as one JSON object per line
    or as a human-readable console line. Loggers are cached on first use, so configure once,
    at startup, before the first event.

    Args:
      format: `json` (one object per line, for machines) or `console` (for people).
      level: the lowest level written.
      secrets: secret values to scrub from every string (configured keys, upstream API keys).
      file: where lines go (standard output by default).

    Returns:
      The redactor it installed; `add` more secrets to it at any time.
    """
    redactor = SecretRedactor(secrets)
    out = file if file is not None else sys.stdout
    processors: list[Any]
    if format == "json":
        processors = [_JsonLine(redactor)]
    else:
        processors = [
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redactor,
            structlog.dev.ConsoleRenderer(colors=out.isatty()),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=_LineWriterFactory(out),
        cache_logger_on_first_use=True,
    )
    return redactor


# -- how a request ended (shared with the metrics middleware) ------------------------------


def status_of(end: StreamEnd) -> int:
    """The HTTP status that describes how a request ended.

    200 when it completed, the error's status for a `ProxyError` (500 for any other
    exception), 499 when the client went away (closed the stream early or was cancelled).
    """
    if end.outcome is Outcome.COMPLETE:
        return 200
    if end.outcome is Outcome.CANCELLED:
        return CLIENT_CLOSED
    return end.error.status if isinstance(end.error, ProxyError) else 500


def api_of(request: Request, ctx: Context) -> str:
    """The API the request came through: the server's door (`ctx.door`), or, for a call
    made from code, the API the request speaks (`Request.api`)."""
    return ctx.door or request.api


def error_type(error: BaseException | None) -> str | None:
    """The error's OpenAI-style type for a `ProxyError`, else its class name."""
    if error is None:
        return None
    return error.type if isinstance(error, ProxyError) else type(error).__name__


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class AccessLog:
    """Write one `request` event per request, when it ends.

    Place it first, so that it sees every request, including those that later middlewares
    reject. The event carries: `request_id`, `api` (the door: `chat`, `completions`,
    `messages`, `count_tokens`, `responses`, `embeddings`; see `api_of`), `key_id` (never
    the key), `model` (as the client asked), `upstream_model`, `provider`, `status` (see
    below), `error` (its type) and `error_message`, `stream`, `outcome` (`complete`,
    `error`, `cancelled`), `latency_ms`, `ttft_ms`, `chunks`, `prompt_tokens`,
    `completion_tokens`, `cache`, `retries`, `fallback` (the alternative that served, if
    any) and `store_errors` (the middlewares whose state store failed during the request,
    if any).

    `status` is 200 for a complete answer, the error's status for a failure (also when the
    stream broke after its first chunk, though the client then saw a 200), and 499 when the
    client went away. Failures with a 5xx status are logged at `warning`, the rest at `info`.

    Nothing is logged per chunk: the event is built once, at the end. Secrets are redacted by
    the `SecretRedactor` that `configure_logging` installs.

    At the `debug` level a `route` event is also written as soon as the answer starts: the
    model asked for, the provider and upstream model that serve it, and the fallback or
    cache status, if any (retry, fallback, cache and store failures log their own
    decisions at `debug`).

    Args:
      logger: the structlog logger to write to (default: `structlog.get_logger("access")`).
    """

    __slots__ = ("_own", "logger")

    def __init__(self, logger: Any = None) -> None:
        self.logger = logger if logger is not None else structlog.get_logger("access")
        # Our own lazy logger may take the direct path to its line (`_direct`).
        self._own = logger is None

    @classmethod
    def from_config(
        cls, config: LogConfig, *, secrets: Iterable[str] = (), file: TextIO | None = None
    ) -> AccessLog:
        """Configure logging for the process from the `[log]` section and build the middleware.

        Args:
          config: the log format and level.
          secrets: secret values to scrub from every string (see `configure_logging`).
          file: where lines go (standard output by default).
        """
        configure_logging(config.format, config.level, secrets=secrets, file=file)
        return cls()

    async def __call__(self, request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        def log(end: StreamEnd) -> None:
            self._log(request, ctx, end)

        ctx.at_end(log, report=True)
        stream = await call_next(request, ctx)
        logger = self.logger.bind() if self._own else self.logger
        enabled = getattr(logger, "is_enabled_for", None)
        if enabled is not None and not enabled(logging.DEBUG):
            return stream  # skip building an event that would be dropped
        logger.debug(
            "route",
            request_id=ctx.request_id,
            model=request.model,
            provider=ctx.provider,
            upstream_model=ctx.upstream_model,
            fallback=ctx.fallback,
            cache=ctx.cache_status,
        )
        return stream

    def _log(self, request: Request, ctx: Context, end: StreamEnd) -> None:
        status = status_of(end)
        error = end.error if end.outcome is Outcome.ERROR else None
        usage = ctx.usage
        method = "warning" if status >= 500 else "info"
        event: dict[str, Any] = dict(
            request_id=ctx.request_id,
            api=api_of(request, ctx),
            key_id=ctx.key_id,
            model=clip_text(request.model),
            upstream_model=ctx.upstream_model,
            provider=ctx.provider,
            status=status,
            error=error_type(error),
            error_message=str(error) if error is not None else None,
            stream=request.stream,
            outcome=end.outcome.value,
            latency_ms=_ms(trio.current_time() - ctx.started),
            ttft_ms=_ms(ctx.ttft),
            chunks=end.chunks,
            prompt_tokens=usage.prompt_tokens if usage is not None else None,
            completion_tokens=usage.completion_tokens if usage is not None else None,
            cache=ctx.cache_status,
            retries=ctx.retries,
            fallback=ctx.fallback,
            store_errors=list(ctx.store_errors) or None,
        )
        if not (self._own and self._direct(method, event)):
            getattr(self.logger, method)("request", **event)

    def _direct(self, method: str, event: dict[str, Any]) -> bool:
        """Write the line without structlog's machinery when it would change nothing.

        That is when the process's configuration is `configure_logging`'s JSON format
        (its one processor, its writer, a level filter) and still in force for our logger
        (`capture_logs` and reconfigurations swap the processors): the same processor
        renders the same event, level, timestamp and redaction included, and the same
        writer writes it. False when the line must go through structlog.
        """
        logger = self.logger.bind()  # the cached logger, after the first event
        processors = getattr(logger, "_processors", None)
        writer = getattr(logger, "_logger", None)
        enabled = getattr(logger, "is_enabled_for", None)
        if (
            enabled is None
            or type(writer) is not _LineWriter
            or not isinstance(processors, list)
            or len(processors) != 1
            or type(processors[0]) is not _JsonLine
            or getattr(logger, "_context", None)
        ):
            return False
        if enabled(_LEVELS[method]):
            event["event"] = "request"  # where structlog puts it: after the fields
            writer.msg(processors[0](writer, method, event))
        return True
