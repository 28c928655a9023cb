"""The HTTP provider: one pooled `http11.Client` per provider, every call under its deadlines.

`HTTPProvider` owns the client (keep-alive connections, a LIFO pool of `pool_size` per
origin, TLS verified against the system trust store plus an optional `ca_file`, proxies
from `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY`, a request on a stale keep-alive connection
retried once). It refuses plain `http://` to hosts that are not loopback, sends requests
under the call's deadlines, and turns upstream statuses and transport failures into the
proxy's errors (`_errors`). Closing or cancelling a call at any point frees its pool slot:
a response read to its end returns its connection to the pool, any other is closed.

A provider built on it translates; it does not deal with HTTP. Its `execute` encodes the
request and either decodes the whole answer (`fetch`) or calls `post` and returns
`stream_events(call, translator)` (`_events`), where the translator turns each
`ServerSentEvent` into at most one `Chunk`.
"""

from __future__ import annotations

import ipaddress
import math
import ssl
from collections.abc import Mapping
from typing import ClassVar, Self, TypeVar
from urllib.parse import SplitResult, urlsplit, urlunsplit

import msgspec
import trio

import http11
from pipeline import (
    BaseProvider,
    ConfigError,
    Context,
    GatewayTimeoutError,
    ProviderError,
    ResponseStream,
    StreamError,
    read_secret,
)

from ._call import UpstreamCall
from ._config import NoOptions, ProviderConfig, parse_options
from ._errors import error_fields, redact, secret_forms, timeout_error, upstream_error
from ._events import EventStream, EventTranslator

__all__ = ["HTTPProvider", "is_loopback"]

# How much of an error answer's body is read: enough for any error object.
MAX_ERROR_BODY = 64 * 1024
# The largest whole (non-streaming) answer read, so that an upstream cannot make the proxy
# hold unbounded memory.
MAX_ANSWER_BODY = 16 * 1024 * 1024

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


def _split(base_url: str) -> SplitResult | None:
    """The parts of an http(s) URL with a host and a valid port, or None."""
    try:
        parts = urlsplit(base_url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts


def _header(provider: str, name: str, value: str) -> tuple[bytes, bytes]:
    """One header as the client sends it; a ConfigError (that never shows the value) if it
    would break the request's framing."""
    if not name or any(c in name for c in ' \t\r\n:"(),/;<=>?@[\\]{}') or not name.isascii():
        raise ConfigError(f"provider `{provider}`: `{name}` is not a valid header name")
    if any(c in value for c in "\r\n\0"):
        raise ConfigError(
            f"provider `{provider}`: the value of header `{name}` contains a line break or a "
            "NUL character"
        )
    return name.lower().encode("ascii"), value.encode()


async def _read_at_most(response: http11.Response, limit: int) -> tuple[bytes, bool]:
    """Up to `limit` bytes of the body, and whether that was all of it."""
    parts: list[bytes] = []
    size = 0
    while part := await response.receive_some():
        if size + len(part) > limit:
            parts.append(part[: limit - size])
            return b"".join(parts), False
        size += len(part)
        parts.append(part)
    return b"".join(parts), True


class HTTPProvider(BaseProvider):
    """Base of the providers that talk HTTP to an upstream API.

    It keeps one `http11.Client` (keep-alive, at most `pool_size` connections, the most
    recently used one reused first) for all requests and closes it in `aclose()`. Every
    call is bounded in time:

    - `ctx.deadline`, when set, exactly;
    - `connect_timeout`: opening a connection (TCP, a proxy's tunnel, TLS);
    - `timeout`: a whole (non-streaming) answer must arrive within it, every wait
      included, and each read of a stream once it has produced its first chunk may take
      no longer. It bounds neither how long a stream lasts nor how long it takes to
      produce its first chunk (the wait for a pooled connection and for the answer's head
      included): those belong to `first_token_timeout`, `ctx.deadline` and the Timeout
      middleware (`ctx.stream_limits`, which the provider's own reads enforce);
    - `first_token_timeout`: a stream must produce its first chunk within it.

    Each wait runs under a trio cancel scope at its deadline; cancelled at any point (a
    deadline, a client that hung up), the call frees its pool slot at once and closes a
    connection whose answer was not read to its end.

    Failures become the proxy's errors:

    - an upstream error status: `ProviderError` with that `upstream_status`, the upstream's
      message, and `retry_after` from `Retry-After` (seconds or an HTTP-date);
    - no answer at all (refused, reset, closed before answering):
      `ProviderError(upstream_status=None)`, retryable;
    - a certificate that cannot be verified (or any failed TLS handshake): a 502
      `ProviderError` naming the TLS error, code `tls_error`, not retryable;
    - a deadline or a connect timeout: `GatewayTimeoutError`;
    - malformed JSON or events (a line over 1 MiB too), a connection dropped mid-stream,
      a stream that ends without a finish reason: `StreamError`, retryable only if no
      chunk was produced yet.

    Subclasses set `kind`, `chat_path`, `validate_path`, `Options` (the msgspec Struct of
    the settings `from_config` reads from `options`) and perhaps `default_base_url`, and
    implement `execute`; a subclass that authenticates differently overrides
    `auth_headers`.

    Args:
      base_url: the upstream's root URL (default: the subclass's `default_base_url`).
      api_key: sent to the upstream; never logged, echoed or part of a repr.
      name: how logs, metrics and errors name this provider (default: its kind).
      timeout: seconds for a whole non-streaming answer, and for each read of a stream
        after its first chunk (see above).
      connect_timeout: seconds to open a connection.
      first_token_timeout: seconds a streaming call may take to produce its first chunk
        (None: only `ctx.deadline` bounds it). A whole (non-streaming) answer is bounded by
        `timeout` only.
      pool_size: the most connections kept to the upstream.
      allow_insecure_http: allow plain `http://` to a host that is not loopback.
      headers: extra headers for every upstream request.
      ca_file: a PEM file of certificate authorities to trust besides the system's.

    Raises:
      ConfigError: the URL is not http(s), or is plain http to a non-loopback host without
        `allow_insecure_http`; a header (the key's included) would break the request; the
        `ca_file` cannot be read.
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
        ca_file: str | None = None,
    ) -> None:
        self.name = name or self.kind
        base_url = base_url or self.default_base_url
        if not base_url:
            raise ConfigError(f"provider `{self.name}`: a base_url is required", param="base_url")
        url = _split(base_url)
        if url is None or url.hostname is None:
            raise ConfigError(
                f"provider `{self.name}`: base_url must be an http:// or https:// URL",
                param="base_url",
            )
        if url.scheme == "http" and not allow_insecure_http and not is_loopback(url.hostname):
            raise ConfigError(
                f"provider `{self.name}`: refusing plain http:// to `{url.hostname}`, which is "
                "not loopback (the API key would cross the network unencrypted); use https:// "
                "or set `allow_insecure_http = true`",
                param="base_url",
            )
        if ca_file is not None:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"provider `{self.name}`: cannot read ca_file `{ca_file}`: {exc}",
                    param="ca_file",
                ) from None
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.first_token_timeout = first_token_timeout
        self._secret = api_key
        self._secret_forms = secret_forms(api_key)
        netloc = url.netloc.rpartition("@")[2]
        self._shown_url = urlunsplit(url._replace(netloc=netloc)).rstrip("/")
        sent = {k.lower(): v for k, v in (headers or {}).items() if k.lower() != "accept"}
        sent["content-type"] = "application/json"
        if api_key:
            sent.update((k.lower(), v) for k, v in self.auth_headers(api_key).items())
        common = [_header(self.name, k, v) for k, v in sent.items()]
        self._json_headers = [*common, (b"accept", b"application/json")]
        self._event_headers = [*common, (b"accept", b"text/event-stream")]
        # Every wait has its deadline from the call (a cancel scope): the client's own read
        # timeout would cut a stream waiting for its first token.
        self.client = http11.Client(
            pool_size=pool_size,
            connect_timeout=connect_timeout,
            read_timeout=None,
            ca_file=ca_file,
        )
        self._chat_url = self.base_url + self.chat_path
        self._validate_url = self.base_url + self.validate_path
        self._pool_size = pool_size

    @property
    def pool_size(self) -> int:
        """The most connections the client keeps to the upstream (fixed when it is built)."""
        return self._pool_size

    @classmethod
    def from_config(cls, config: ProviderConfig) -> Self:
        """Build the provider from its configuration section.

        The API key is read from the environment variable `api_key_env`; it may be left out
        only for a loopback `base_url`. `options` must be settings this kind understands.

        Args:
          config: the provider's section.

        Raises:
          ConfigError: no base_url, a missing or empty key variable (named, never a value),
            no `api_key_env` for a remote upstream, an unknown option, an insecure URL, or
            an unreadable `ca_file`.
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
            url = _split(config.base_url)
            if url is None or not is_loopback(url.hostname or ""):
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
            ca_file=config.ca_file,
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
        whole_limits = None
        enclosed = math.inf
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
            headers = self._event_headers
        else:
            deadline = first_deadline = min(ctx_deadline, now + self.timeout)
            headers = self._json_headers
            whole_limits = ctx.stream_limits
            if whole_limits is not None:
                enclosed = whole_limits.enclosed
        response = await self._send(b"POST", url, headers, body, first_deadline, deadline, enclosed)
        return UpstreamCall(response, deadline, first_deadline, ctx_deadline, idle, whole_limits)

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
        timed_out = False
        try:
            if response.complete:
                # The body came with the head (the usual whole answer): reading it cannot
                # wait, so it needs no cancel scope.
                body, whole = await _read_at_most(response, MAX_ANSWER_BODY)
            else:
                with trio.CancelScope(deadline=call.deadline) as scope:
                    body, whole = await _read_at_most(response, MAX_ANSWER_BODY)
                timed_out = scope.cancelled_caught
        except http11.HTTPError as exc:
            raise StreamError(
                self._redact(
                    f"the connection to the upstream broke while reading the answer: {exc}"
                ),
                provider=self.name,
                retryable=True,
            ) from None
        finally:
            response.close()  # synchronous: safe while being cancelled
        if timed_out:
            raise self._timeout_error("the upstream did not answer before the deadline")
        if not whole:
            raise StreamError(
                f"upstream `{self.name}` sent an answer larger than "
                f"{MAX_ANSWER_BODY // (1024 * 1024)} MiB",
                provider=self.name,
            )
        if call.limits is not None:
            # The whole answer is in memory, read within the timeout middleware's
            # first-token scope: the stream made of it never waits, so a cancel scope
            # per chunk around it would guard nothing.
            call.limits.enforced = True
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
        upstream connection at once, unless the answer was complete, in which case the
        connection goes back to the pool.
        """
        return ResponseStream(
            EventStream(
                call,
                translator,
                provider=self.name,
                timeout=self.timeout,
                secrets=self._secret_forms,
            )
        )

    async def validate(self) -> None:
        """Check that the upstream answers `validate_path` with success, with our key.

        Raises:
          ProviderError: the upstream refused (a 401 for a wrong key) or did not answer.
          GatewayTimeoutError: it did not answer within `timeout`.
        """
        deadline = trio.current_time() + self.timeout
        url = self._validate_url
        response = await self._send(b"GET", url, self._json_headers, b"", deadline, deadline)
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
        return timeout_error(self.name, message, self._secret_forms, retryable=retryable)

    async def _request(
        self, method: bytes, url: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> http11.Response:
        try:
            return await self.client.request(method, url, headers, body)
        except http11.TimeoutException as exc:
            raise self._timeout_error(f"timed out waiting for an answer: {exc}") from None
        except http11.HTTPError as exc:
            tls = isinstance(exc, http11.TLSError)
            raise ProviderError(
                self._redact(f"cannot reach upstream `{self.name}`: {type(exc).__name__}: {exc}"),
                upstream_status=None,
                provider=self.name,
                code="tls_error" if tls else None,
                retryable=False if tls else None,
            ) from None

    async def _send(
        self,
        method: bytes,
        url: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        first_deadline: float,
        deadline: float,
        enclosed: float = math.inf,
    ) -> http11.Response:
        if first_deadline > enclosed:
            # A scope with an earlier deadline encloses the call (the timeout middleware's
            # first-token scope): it passes first, so a scope here would never fire.
            response = await self._request(method, url, headers, body)
        else:
            with trio.CancelScope(deadline=first_deadline) as scope:
                response = await self._request(method, url, headers, body)
            if scope.cancelled_caught:
                if first_deadline < deadline:
                    message = "no answer before the first-token timeout"
                else:
                    message = "the upstream did not answer before the deadline"
                raise self._timeout_error(message)
        if 200 <= response.status < 300:
            return response
        body = b""
        try:
            # A stream's deadline may be infinite: an error body gets `timeout` at most.
            with trio.CancelScope(deadline=min(deadline, trio.current_time() + self.timeout)):
                body, _ = await _read_at_most(response, MAX_ERROR_BODY)
        except http11.HTTPError:
            body = b""
        finally:
            response.close()  # synchronous: safe while being cancelled
        retry_after = response.header(b"retry-after")
        raise upstream_error(
            response.status,
            body,
            provider=self.name,
            retry_after=None if retry_after is None else retry_after.decode("latin-1"),
            secret=self._secret,
        )
