"""The plumbing every HTTP provider shares: client, deadlines, errors, and event streams.

`HTTPProvider` owns one pooled `httpx2.AsyncClient`, refuses plain `http://` to hosts that
are not loopback, sends requests under the call's deadline, turns upstream statuses and
transport failures into the proxy's errors, and hands out `ResponseStream`s over
server-sent events that close the upstream response the moment they are closed or
cancelled.

The client is httpx2 (pydantic's maintained continuation of httpx, with the same API),
not httpx: httpx's pool (httpcore 1.0) leaves a connection stuck in CONNECTING whenever a
request is cancelled while it waits for a connection (encode/httpcore#1093), and a proxy
cancels such waits all the time (clients hang up, deadlines pass), so its pool would
run dry for good.

A provider built on it translates; it does not deal with HTTP. Its `execute` encodes the
request and either decodes the whole answer (`fetch`) or calls `post` and returns
`stream_events(call, translator)`, where the translator turns each `ServerSentEvent` into
at most one `Chunk`.
"""

from __future__ import annotations

import http.cookiejar
import ipaddress
import json
import math
import time
from collections.abc import Mapping
from contextlib import aclosing
from email.utils import parsedate_to_datetime
from typing import ClassVar, Protocol, Self, TypeVar

import httpx2
import msgspec
import trio

from pipeline import (
    BaseProvider,
    Chunk,
    ConfigError,
    Context,
    GatewayTimeoutError,
    ProviderError,
    ProxyError,
    ResponseStream,
    StreamError,
    read_secret,
)

from ._config import ProviderConfig
from ._sse import EventStreamError, ServerSentEvent, SSEDecoder

__all__ = [
    "EventTranslator",
    "HTTPProvider",
    "NoOptions",
    "UpstreamCall",
    "UpstreamEventError",
    "decode_event",
    "error_fields",
    "is_loopback",
    "parse_options",
    "parse_retry_after",
    "redact",
    "secret_forms",
    "trim",
    "upstream_error",
]

# How much of an upstream's error text (a body, an error event) an error message quotes.
MAX_ERROR_TEXT = 500
# How much of an error answer's body is read: enough for any error object.
MAX_ERROR_BODY = 64 * 1024
# The largest whole (non-streaming) answer read, so that an upstream cannot make the proxy
# hold unbounded memory.
MAX_ANSWER_BODY = 16 * 1024 * 1024
# After the upstream said the answer is complete, closing the stream reads at most this
# many more pieces, for at most DRAIN_TIMEOUT seconds, looking for the end of the body (so
# the connection goes back to the pool) before it gives up and closes the connection.
MAX_DRAIN_READS = 4
DRAIN_TIMEOUT = 0.25
# Closing a response runs shielded from cancellation, but never longer than this.
CLOSE_TIMEOUT = 5.0

_any_decoder = msgspec.json.Decoder()
T = TypeVar("T")


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine: `localhost`, 127.0.0.0/8 or ::1."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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

    As it is, and as `repr` (of the text or of its bytes, as httpx2 quotes a header) and
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


class UpstreamEventError(Exception):
    """A translator's complaint about the stream: an error event, or data it cannot use.

    The stream turns it into a `ProviderError` with `upstream_status` when no chunk has been
    produced yet and a status is known (an error event before the answer started), and into
    a `StreamError` otherwise. The stream redacts the provider's key from the message and
    trims it, so a translator passes the upstream's text whole.

    Args:
      message: what went wrong, as the upstream said it.
      upstream_status: the HTTP status the upstream's error corresponds to, if known.
      code: the upstream's error code or type, if any.
    """

    def __init__(
        self, message: str, *, upstream_status: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.upstream_status = upstream_status
        self.code = code


def decode_event(decoder: msgspec.json.Decoder[T], data: str) -> T:
    """Decode an event's data with `decoder`.

    Raises:
      UpstreamEventError: the data is an error object (`{"error": {"message": ...}}`), with
        its message: how OpenAI-style servers report a failure mid-stream.
      msgspec.MsgspecError: the data is malformed.
    """
    try:
        return decoder.decode(data)
    except msgspec.ValidationError:
        message, code, _ = error_fields(data)
        if message is None:
            raise
        raise UpstreamEventError(
            f"the upstream reported an error mid-stream: {message}", code=code
        ) from None


class EventTranslator(Protocol):
    """Turns one upstream's events into chunks; one instance per stream.

    Attributes:
      done: set once the upstream said the answer is complete (`[DONE]`, `message_stop`);
        later events are ignored.
    """

    done: bool

    def feed(self, event: ServerSentEvent) -> Chunk | None:
        """The chunk this event carries, if any.

        Raises:
          UpstreamEventError: the event is an error, or cannot be used.
          msgspec.MsgspecError: the event's JSON is malformed.
        """
        ...

    def finish(self) -> Chunk | None:
        """Called once at the end of the stream; returns the usage chunk if one is still due.

        Raises:
          UpstreamEventError: the stream ended without a finish reason.
        """
        ...


class UpstreamCall:
    """An upstream response whose status was fine, with the deadlines of its call.

    Attributes:
      response: the open response (its body not read yet).
      deadline: trio time by which the call must be done: for a whole answer the earlier
        of the context's deadline and `timeout` seconds after the start, for a stream the
        context's deadline.
      first_deadline: trio time by which a stream's first chunk must be produced (the
        earlier of the context's deadline and `first_token_timeout` after the start).
      ctx_deadline: the context's deadline (infinite if none), which every read honours
        exactly.
      idle: seconds each read after the first chunk may take at most, when the timeout
        middleware asked for less than the provider's `timeout` (`ctx.stream_limits`).
    """

    __slots__ = ("ctx_deadline", "deadline", "first_deadline", "idle", "response")

    def __init__(
        self,
        response: httpx2.Response,
        deadline: float,
        first_deadline: float,
        ctx_deadline: float = math.inf,
        idle: float | None = None,
    ) -> None:
        self.response = response
        self.deadline = deadline
        self.first_deadline = first_deadline
        self.ctx_deadline = ctx_deadline
        self.idle = idle


async def _read_at_most(response: httpx2.Response, limit: int) -> tuple[bytes, bool]:
    """Up to `limit` bytes of the body, and whether that was all of it."""
    parts: list[bytes] = []
    size = 0
    async with aclosing(response.aiter_bytes()) as body:
        async for part in body:
            if size + len(part) > limit:
                parts.append(part[: limit - size])
                return b"".join(parts), False
            size += len(part)
            parts.append(part)
    return b"".join(parts), True


async def _close_response(response: httpx2.Response) -> None:
    """Close a response even while the caller is being cancelled."""
    with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT):
        await response.aclose()


_NO_COOKIES = http.cookiejar.DefaultCookiePolicy(allowed_domains=[])
"""A cookie policy that accepts no cookie from any domain."""


class NoOptions(msgspec.Struct, forbid_unknown_fields=True):
    """A provider kind that takes no `options`."""


OptionsT = TypeVar("OptionsT", bound=msgspec.Struct)


def parse_options(config: ProviderConfig, options_type: type[OptionsT]) -> OptionsT:
    """Validate a provider's `options` table against the settings its kind understands.

    Raises:
      ConfigError: an option is unknown or has the wrong type; the message names the
        provider, and `param` is the option's path below its section (`options.chunks`).
    """
    try:
        return msgspec.convert(config.options, options_type)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).partition(" - at `$")
        param = "options" + path.rstrip("`") if path else "options"
        raise ConfigError(f"provider `{config.name}`: {message}", param=param) from None


class HTTPProvider(BaseProvider):
    """Base of the providers that talk HTTP to an upstream API.

    It keeps one pooled `httpx2.AsyncClient` (keep-alive, at most `pool_size` connections)
    for all requests and closes it in `aclose()`. Every call is bounded in time:

    - `ctx.deadline`, when set, exactly;
    - `timeout`: no single wait (connecting, sending, waiting for a pooled connection,
      each read once a stream has produced its first chunk) takes longer, and a whole
      (non-streaming) answer must arrive within it. It bounds neither how long a stream
      lasts nor how long it takes to produce its first chunk: those belong to
      `first_token_timeout`, `ctx.deadline` and the Timeout middleware;
    - `first_token_timeout`: a stream must produce its first chunk within it.

    A stream's reads run under a cancel scope of their own (httpx2 cannot change a
    response's read timeout after its first read, and the first reads may wait longer
    than `timeout`).

    Failures become the proxy's errors:

    - an upstream error status: `ProviderError` with that `upstream_status`, the upstream's
      message, and `retry_after` from `Retry-After` (seconds or an HTTP-date);
    - no answer at all (refused, reset): `ProviderError(upstream_status=None)`, retryable;
    - a deadline or an httpx2 timeout: `GatewayTimeoutError`;
    - malformed JSON or events (a line over 1 MiB too), a connection dropped mid-stream,
      a stream that ends without a finish reason: `StreamError`, retryable only if no
      chunk was produced yet.

    Subclasses set `kind`, `chat_path`, `validate_path`, `Options` (the msgspec Struct of
    the settings `from_config` reads from `options`) and perhaps `default_base_url`, and implement
    `execute`; a subclass that authenticates differently overrides `auth_headers`.

    Args:
      base_url: the upstream's root URL (default: the subclass's `default_base_url`).
      api_key: sent to the upstream; never logged, echoed or part of a repr.
      name: how logs, metrics and errors name this provider (default: its kind).
      timeout: seconds any single wait may take, and a whole non-streaming answer (see
        above); not a bound on a stream's length or on its time to the first chunk.
      connect_timeout: seconds to open a connection.
      first_token_timeout: seconds a streaming call may take to produce its first chunk
        (None: only `ctx.deadline` bounds it). A whole (non-streaming) answer is bounded by
        `timeout` only.
      pool_size: the most connections kept to the upstream.
      allow_insecure_http: allow plain `http://` to a host that is not loopback.
      headers: extra headers for every upstream request.
      transport: an httpx transport to use instead of the network (`httpx2.MockTransport`
        in tests).

    Raises:
      ConfigError: the URL is not http(s), or is plain http to a non-loopback host without
        `allow_insecure_http`.
    """

    kind: ClassVar[str] = "http"
    default_base_url: ClassVar[str | None] = None
    chat_path: ClassVar[str] = ""
    validate_path: ClassVar[str] = ""
    Options: ClassVar[type[msgspec.Struct]] = NoOptions

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        name: str | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 5.0,
        first_token_timeout: float | None = None,
        pool_size: int = 100,
        allow_insecure_http: bool = False,
        headers: Mapping[str, str] | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name or self.kind
        base_url = base_url or self.default_base_url
        if not base_url:
            raise ConfigError(f"provider `{self.name}`: a base_url is required", param="base_url")
        try:
            url = httpx2.URL(base_url)
        except httpx2.InvalidURL as exc:
            raise ConfigError(f"provider `{self.name}`: invalid base_url: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(
                f"provider `{self.name}`: base_url must be an http:// or https:// URL",
                param="base_url",
            )
        if url.scheme == "http" and not allow_insecure_http and not is_loopback(url.host):
            raise ConfigError(
                f"provider `{self.name}`: refusing plain http:// to `{url.host}`, which is not "
                "loopback (the API key would cross the network unencrypted); use https:// or "
                "set `allow_insecure_http = true`",
                param="base_url",
            )
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.first_token_timeout = first_token_timeout
        self._secret = api_key
        self._secret_forms = secret_forms(api_key)
        self._shown_url = str(url.copy_with(username=None, password=None)).rstrip("/")
        client_headers = {**(headers or {}), "content-type": "application/json"}
        if api_key:
            client_headers.update(self.auth_headers(api_key))
        # A stream's reads are bounded by `_EventStream`: the wait for its first chunk is not
        # the timeout's to bound, and httpx2 cannot change a response's read timeout midway.
        self._stream_timeout = httpx2.Timeout(timeout, connect=connect_timeout, read=None)
        self.client = httpx2.AsyncClient(
            # One client serves every caller: a cookie the upstream sets for one request
            # must never ride along on another caller's (a session, a sticky route).
            cookies=http.cookiejar.CookieJar(policy=_NO_COOKIES),
            headers=client_headers,
            timeout=httpx2.Timeout(timeout, connect=connect_timeout),
            limits=httpx2.Limits(max_connections=pool_size, max_keepalive_connections=pool_size),
            transport=transport,
            follow_redirects=False,
        )
        self._chat_url = self.base_url + self.chat_path
        self._validate_url = self.base_url + self.validate_path
        self._pool_size = pool_size

    @property
    def pool_size(self) -> int:
        """The most connections the client keeps to the upstream (fixed when it is built)."""
        return self._pool_size

    @classmethod
    def from_config(
        cls, config: ProviderConfig, *, transport: httpx2.AsyncBaseTransport | None = None
    ) -> Self:
        """Build the provider from its configuration section.

        The API key is read from the environment variable `api_key_env`; it may be left out
        only for a loopback `base_url`. `options` must be settings this kind understands.

        Args:
          config: the provider's section.
          transport: passed to the httpx2 client (tests).

        Raises:
          ConfigError: no base_url, a missing or empty key variable (named, never a value),
            no `api_key_env` for a remote upstream, an unknown option, or an insecure URL.
        """
        if not config.base_url:
            raise ConfigError(
                f"provider `{config.name}`: a `{config.kind}` provider needs a base_url",
                param="base_url",
            )
        options = parse_options(config, cls.Options)
        api_key = None
        if config.api_key_env is not None:
            api_key = read_secret(config.api_key_env)
        else:
            try:
                host = httpx2.URL(config.base_url).host
            except httpx2.InvalidURL:
                host = ""
            if not is_loopback(host):
                raise ConfigError(
                    f"provider `{config.name}`: `api_key_env` is required unless base_url is "
                    "a loopback address",
                    param="api_key_env",
                )
        return cls(
            config.base_url,
            api_key=api_key,
            name=config.name,
            timeout=config.timeout,
            connect_timeout=config.connect_timeout,
            first_token_timeout=config.first_token_timeout,
            pool_size=config.pool_size,
            allow_insecure_http=config.allow_insecure_http,
            headers=config.headers,
            transport=transport,
            **msgspec.structs.asdict(options),
        )

    def auth_headers(self, api_key: str) -> dict[str, str]:
        """The headers that carry the API key (default: `Authorization: Bearer`)."""
        return {"authorization": f"Bearer {api_key}"}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, base_url={self._shown_url!r})"

    # -- calls -----------------------------------------------------------------------------

    async def post(self, url: str, body: bytes, ctx: Context, *, stream: bool) -> UpstreamCall:
        """Send a JSON body and wait for the answer's status and headers.

        Args:
          url: where to send it.
          body: the encoded JSON.
          ctx: the request's context; its `deadline` bounds the call.
          stream: whether the answer is an event stream (sets `Accept` and the
            first-token deadline).

        Returns:
          The call, with its response open: pass it to `stream_events` or `read_body`.

        Raises:
          ProviderError: the upstream answered with an error status, or not at all.
          GatewayTimeoutError: the deadline passed first.
        """
        now = trio.current_time()
        ctx_deadline = math.inf if ctx.deadline is None else ctx.deadline
        idle = None
        if stream:
            deadline = first_deadline = ctx_deadline
            if self.first_token_timeout is not None:
                first_deadline = min(ctx_deadline, now + self.first_token_timeout)
            limits = ctx.stream_limits
            if limits is not None:
                # Every read below runs under a deadline anyway: fold the timeout
                # middleware's limits into it, so it need not wrap each chunk again.
                first_deadline = min(first_deadline, limits.first_token_deadline)
                if limits.idle is not None and limits.idle < self.timeout:
                    idle = limits.idle
                limits.enforced = True
            request = self.client.build_request(
                "POST", url, content=body, headers=_ACCEPT_EVENTS, timeout=self._stream_timeout
            )
        else:
            deadline = first_deadline = min(ctx_deadline, now + self.timeout)
            request = self.client.build_request("POST", url, content=body, headers=_ACCEPT_JSON)
        response = await self._send(request, first_deadline, deadline)
        return UpstreamCall(response, deadline, first_deadline, ctx_deadline, idle)

    async def read_body(self, call: UpstreamCall) -> bytes:
        """Read a whole answer's body under the call's deadline, and close the response.

        Raises:
          StreamError: the connection broke before the body was complete (retryable), or
            the body is larger than `MAX_ANSWER_BODY` (16 MiB).
          GatewayTimeoutError: the deadline passed first.
        """
        response = call.response
        body = b""
        whole = True
        try:
            with trio.CancelScope(deadline=call.deadline) as scope:
                body, whole = await _read_at_most(response, MAX_ANSWER_BODY)
        except httpx2.TimeoutException as exc:
            raise self._timeout_error(f"timed out reading the answer: {exc}") from None
        except httpx2.HTTPError as exc:
            raise StreamError(
                self._redact(
                    f"the connection to the upstream broke while reading the answer: {exc}"
                ),
                provider=self.name,
                retryable=True,
            ) from None
        finally:
            await _close_response(response)
        if scope.cancelled_caught:
            raise self._timeout_error("the upstream did not answer before the deadline")
        if not whole:
            raise StreamError(
                f"upstream `{self.name}` sent an answer larger than "
                f"{MAX_ANSWER_BODY // (1024 * 1024)} MiB",
                provider=self.name,
            )
        return body

    async def fetch(
        self, url: str, body: bytes, ctx: Context, decoder: msgspec.json.Decoder[T]
    ) -> T:
        """Post a JSON body and decode the whole answer with `decoder`.

        Raises:
          ProviderError: the upstream answered with an error status, or not at all.
          StreamError: the answer is not what `decoder` expects (retryable); the message is
            the upstream's, if the answer is an error object.
          GatewayTimeoutError: the deadline passed first.
        """
        data = await self.read_body(await self.post(url, body, ctx, stream=False))
        try:
            return decoder.decode(data)
        except msgspec.MsgspecError as exc:
            message = (
                error_fields(data)[0] or f"upstream `{self.name}` sent a malformed answer: {exc}"
            )
            raise StreamError(self._redact(message), provider=self.name, retryable=True) from None

    def stream_events(self, call: UpstreamCall, translator: EventTranslator) -> ResponseStream:
        """A stream of the chunks `translator` makes of the call's server-sent events.

        The stream owns the response: closing it (or cancelling its reader) closes the
        upstream connection at once.
        """
        return ResponseStream(_EventStream(self, call, translator))

    async def validate(self) -> None:
        """Check that the upstream answers `validate_path` with success, with our key.

        Raises:
          ProviderError: the upstream refused (a 401 for a wrong key) or did not answer.
          GatewayTimeoutError: it did not answer within `timeout`.
        """
        deadline = trio.current_time() + self.timeout
        request = self.client.build_request("GET", self._validate_url, headers=_ACCEPT_JSON)
        response = await self._send(request, deadline, deadline)
        await self.read_body(UpstreamCall(response, deadline, deadline))

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self.client.aclose()

    # -- internals -------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        """`text` without our API key, however it is quoted: for messages built from
        exceptions and upstream bodies, which may contain it."""
        return redact(text, self._secret_forms)

    def _timeout_error(self, message: str, *, retryable: bool = True) -> GatewayTimeoutError:
        return GatewayTimeoutError(
            self._redact(f"upstream `{self.name}`: {message}"), retryable=retryable
        )

    async def _send(
        self, request: httpx2.Request, first_deadline: float, deadline: float
    ) -> httpx2.Response:
        with trio.CancelScope(deadline=first_deadline) as scope:
            try:
                response = await self.client.send(request, stream=True)
            except httpx2.TimeoutException as exc:
                raise self._timeout_error(f"timed out waiting for an answer: {exc}") from None
            except httpx2.HTTPError as exc:
                raise ProviderError(
                    self._redact(
                        f"cannot reach upstream `{self.name}`: {type(exc).__name__}: {exc}"
                    ),
                    upstream_status=None,
                    provider=self.name,
                ) from None
        if scope.cancelled_caught:
            if first_deadline < deadline:
                message = "no answer before the first-token timeout"
            else:
                message = "the upstream did not answer before the deadline"
            raise self._timeout_error(message)
        if 200 <= response.status_code < 300:
            return response
        body = b""
        try:
            # A stream's deadline may be infinite: an error body gets `timeout` at most.
            with trio.CancelScope(deadline=min(deadline, trio.current_time() + self.timeout)):
                body, _ = await _read_at_most(response, MAX_ERROR_BODY)
        except httpx2.HTTPError:
            body = b""
        finally:
            await _close_response(response)
        raise upstream_error(
            response.status_code,
            body,
            provider=self.name,
            retry_after=response.headers.get("retry-after"),
            secret=self._secret,
        )


def _carries_nothing(chunk: Chunk) -> bool:
    """Whether a chunk has nothing of the answer: no text, reasoning, tool call, refusal,
    finish reason, log probabilities or usage (OpenAI's opening role chunk, Anthropic's
    message_start)."""
    if chunk.usage is not None:
        return False
    for choice in chunk.choices:
        delta = choice.delta
        if (
            delta.content
            or delta.reasoning_content
            or delta.tool_calls
            or delta.refusal
            or choice.finish_reason is not None
            or choice.logprobs is not None
        ):
            return False
    return True


_ACCEPT_EVENTS = {"accept": "text/event-stream"}
_ACCEPT_JSON = {"accept": "application/json"}


class _EventStream:
    """The chunk source of `HTTPProvider.stream_events`: reads, decodes, translates.

    A class rather than an async generator, so that a read can run under a cancel scope
    when a deadline needs one, and the response is closed the moment the stream is closed,
    fails or is cancelled. Once closed it produces nothing more.
    """

    __slots__ = (
        "_call",
        "_complete",
        "_decoder",
        "_eof",
        "_events",
        "_index",
        "_produced",
        "_provider",
        "_reader",
        "_response",
        "_roles",
        "_translator",
    )

    def __init__(
        self, provider: HTTPProvider, call: UpstreamCall, translator: EventTranslator
    ) -> None:
        self._provider = provider
        self._call = call
        self._response: httpx2.Response | None = call.response
        # An async generator: closed in `aclose`.
        self._reader = call.response.aiter_bytes()
        self._decoder = SSEDecoder()
        self._translator = translator
        self._events: list[ServerSentEvent] = []
        self._index = 0
        self._produced = False
        # Roles of opening chunks held back, by choice index, for the choice's first chunk.
        self._roles: dict[int, str] = {}
        self._eof = False
        self._complete = False

    async def __anext__(self) -> Chunk:
        if self._response is None or self._complete:
            raise StopAsyncIteration
        translator = self._translator
        try:
            while True:
                events = self._events
                while self._index < len(events) and not translator.done:
                    event = events[self._index]
                    self._index += 1
                    chunk = translator.feed(event)
                    if chunk is None:
                        continue
                    if self._produced:
                        if self._roles:
                            self._give_roles(chunk)
                        return chunk
                    if _carries_nothing(chunk):
                        self._hold_roles(chunk)
                        continue
                    self._give_roles(chunk)
                    self._produced = True
                    return chunk
                if translator.done or self._eof:
                    return await self._finish()
                data = await self._read()
                if data:
                    self._events = self._decoder.feed(data)
                else:
                    self._events = self._decoder.close()
                    self._eof = True
                self._index = 0
        except StopAsyncIteration:
            raise
        except BaseException as exc:
            await self.aclose()
            error = self._error(exc)
            if error is None:
                raise
            raise error from exc

    async def _read(self) -> bytes:
        """The next piece of the body (b"" at its end), within the call's deadlines.

        Until the first chunk, a read may last until the first-chunk deadline; after it,
        each read lasts at most `timeout` seconds, and never past the context's deadline.
        """
        call = self._call
        if self._produced:
            limit = self._provider.timeout if call.idle is None else call.idle
            deadline = trio.current_time() + limit
            if deadline > call.ctx_deadline:
                deadline = call.ctx_deadline
        else:
            deadline = call.first_deadline
        with trio.CancelScope(deadline=deadline):
            try:
                return await self._reader.__anext__()
            except StopAsyncIteration:
                return b""
        raise self._provider._timeout_error(self._timeout_message(), retryable=not self._produced)

    def _timeout_message(self) -> str:
        provider = self._provider
        if trio.current_time() >= self._call.ctx_deadline:
            if self._produced:
                return "the stream did not finish before the deadline"
            return "the stream did not start before the deadline"
        if self._produced:
            if self._call.idle is not None:
                return f"no data from the upstream for {self._call.idle:g}s (idle timeout)"
            return f"no data from the upstream for {provider.timeout:g}s"
        return "no first chunk before the first-token timeout"

    async def _finish(self) -> Chunk:
        chunk = self._translator.finish()
        if self._eof:
            await self.aclose()
        else:
            # The answer is complete, though its body may not have ended: the stream ends
            # now, and `aclose` looks for the body's end.
            self._complete = True
        if chunk is None:
            raise StopAsyncIteration
        self._produced = True
        return chunk

    def _hold_roles(self, chunk: Chunk) -> None:
        for choice in chunk.choices:
            if choice.delta.role is not None:
                self._roles[choice.index] = choice.delta.role

    def _give_roles(self, chunk: Chunk) -> None:
        roles = self._roles
        for choice in chunk.choices:
            role = roles.pop(choice.index, None)
            if role is not None and choice.delta.role is None:
                choice.delta.role = role

    def _error(self, exc: BaseException) -> ProxyError | None:
        provider = self._provider
        name = provider.name
        redact = provider._redact
        retryable = not self._produced
        if isinstance(exc, UpstreamEventError):
            message = trim(redact(exc.message))
            code = redact(exc.code) if exc.code else None
            if exc.upstream_status is not None and not self._produced:
                return ProviderError(
                    message, upstream_status=exc.upstream_status, provider=name, code=code
                )
            return StreamError(message, provider=name, retryable=retryable)
        if isinstance(exc, (msgspec.MsgspecError, EventStreamError)):
            return StreamError(
                redact(f"upstream `{name}` sent malformed data: {exc}"),
                provider=name,
                retryable=retryable,
            )
        if isinstance(exc, httpx2.TimeoutException):
            return provider._timeout_error(f"timed out reading: {exc}", retryable=retryable)
        if isinstance(exc, httpx2.HTTPError):
            return StreamError(
                redact(f"the connection to upstream `{name}` broke mid-stream: {exc}"),
                provider=name,
                retryable=retryable,
            )
        return None

    async def aclose(self) -> None:
        response = self._response
        if response is None:
            return
        self._response = None
        self._events = []
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT):
            if self._complete:
                await self._drain()
            await self._reader.aclose()
            await response.aclose()

    async def _drain(self) -> None:
        """Read the rest of a complete answer's body, briefly and at best.

        A body read to its end lets the connection go back to the pool; one that does not
        end soon is not waited for: its connection is closed instead.
        """
        with trio.move_on_after(DRAIN_TIMEOUT):
            try:
                for _ in range(MAX_DRAIN_READS):
                    await self._reader.__anext__()
            except (StopAsyncIteration, httpx2.HTTPError):
                pass
