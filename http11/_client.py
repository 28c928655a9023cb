"""HTTP/1.1 client on trio: pooled keep-alive connections, TLS, proxies from the environment.

`Client.request` sends the request (with a Content-Length body) and returns a `Response` as
soon as the status and headers arrived; the body is read with `Response.receive_some` or
`Response.read`. The response holds a pool slot until the body ended or `aclose()` was
called; a fully read body on a keep-alive connection returns the connection to the pool.

A request on a reused connection that fails before any byte of the answer arrived (the
server closed an idle connection: end of file or reset on send or on the first read) is
retried once on a new connection; after any byte of an answer nothing is retried.

Timeouts: `connect_timeout` bounds opening a connection (TCP, proxy tunnel and TLS);
`read_timeout` bounds each read (the wait for the head, and each body read); the
per-request `timeout` bounds everything until the head arrived: waiting for a pool slot,
connecting, sending and waiting for the head.

Read timeouts cost no cancel scope per read (about 5 us each): a read records its deadline
with the client's `_ReadWatchdog`, a system task that a few times per read timeout (at
most once a second) interrupts the reads past their deadline, which then raise
`ReadTimeout` (up to one tick late). The task runs only while reads are waiting.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from functools import lru_cache
from typing import Final
from urllib.parse import urlsplit

import httptools
import trio

from ._errors import (
    ConnectError,
    ConnectTimeout,
    HTTPError,
    PoolTimeout,
    ReadTimeout,
    RemoteProtocolError,
    ResponseTooLarge,
    TLSError,
    WriteTimeout,
)
from ._pool import Lease, Pool, PoolStatistics
from ._proxy_env import Proxy, ProxySettings
from ._tls import client_ssl_context
from ._transport import SocketTransport, TLSTransport, Transport

__all__ = ["Client", "Response"]

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_BODY_METHODS: Final = frozenset({b"POST", b"PUT", b"PATCH"})


class _Stale(Exception):
    """The connection failed before any byte of the answer: safe to retry once."""


@lru_cache(maxsize=512)
def _split_url(url: str) -> tuple[tuple[str, str, int], bytes, bytes]:
    """(origin, request target, Host header value) of an absolute http(s) URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"unsupported URL scheme {scheme!r}: use http or https")
    host = parts.hostname
    if not host:
        raise ValueError("the URL has no host")
    port = parts.port or _DEFAULT_PORTS[scheme]
    target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == _DEFAULT_PORTS[scheme] else f"{shown}:{port}"
    return (scheme, host, port), target.encode("ascii"), host_header.encode("ascii")


class _ReadWatchdog:
    """Interrupts a client's reads that passed their deadline (see the module docstring).

    The checking task is a system task (a client has no nursery): started by the first
    read that waits, it ends at a tick that finds no read waiting, and is started again
    in a new trio run.
    """

    __slots__ = ("period", "reads", "running", "token")

    def __init__(self) -> None:
        self.reads: dict[_Connection, float] = {}  # read in progress -> its deadline
        self.period = _MAX_TICK
        self.running = False
        self.token: trio.lowlevel.TrioToken | None = None

    def watch(self, conn: _Connection, read_timeout: float) -> None:
        self.reads[conn] = trio.current_time() + read_timeout
        if read_timeout / 4 < self.period:
            self.period = max(_MIN_TICK, read_timeout / 4)
        token = trio.lowlevel.current_trio_token()
        if not self.running or self.token is not token:
            self.running = True
            self.token = token
            trio.lowlevel.spawn_system_task(self._check, name="http11 client read timeouts")

    async def _check(self) -> None:
        reads = self.reads
        try:
            while True:
                await trio.sleep(self.period)
                if not reads:
                    return  # a whole tick without a read waiting: the next one restarts us
                now = trio.current_time()
                for conn, deadline in list(reads.items()):
                    if deadline <= now:
                        del reads[conn]
                        conn.timed_out = True
                        conn.transport.interrupt()
        finally:
            if self.token is trio.lowlevel.current_trio_token():
                self.running = False


_MIN_TICK = 0.05
_MAX_TICK = 1.0


class _Connection:
    """One connection to an origin, and the llhttp state of the response being read."""

    def __init__(self, transport: Transport, watchdog: _ReadWatchdog) -> None:
        self.transport = transport
        self.watchdog = watchdog
        self.timed_out = False
        self.parser = httptools.HttpResponseParser(self)
        self.head_only = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.headers_done = False
        self.complete = False
        self.framed = False  # Content-Length or chunked; otherwise the body ends at EOF
        self.keep_alive = False
        self.received = 0

    def fileno(self) -> int:
        return self.transport.fileno()

    def close(self) -> None:
        self.transport.close()

    # -- llhttp callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.headers = []
        self.framed = False

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self.headers.append((name, value))
        if name == b"content-length" or name == b"transfer-encoding":
            self.framed = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.reason = b""  # an interim answer: wait for the real one
            return
        self.status = status
        self.headers_done = True
        self.keep_alive = self.parser.should_keep_alive()
        if self.head_only or status in (204, 304):
            self.framed = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.headers_done:
            self.complete = True

    # -- I/O ----------------------------------------------------------------------------

    async def _receive(self, read_timeout: float | None, later: bool = False) -> bytes:
        transport = self.transport
        receive = transport.receive_later if later else transport.receive_some
        if read_timeout is None:
            return await receive()
        watchdog = self.watchdog
        watchdog.watch(self, read_timeout)
        try:
            data = await receive()
        except trio.ClosedResourceError:
            if not self.timed_out:
                raise
        finally:
            watchdog.reads.pop(self, None)
        if self.timed_out:  # even if the bytes came in the same scheduler pass: too late
            raise ReadTimeout(f"no data from the server within {read_timeout} s")
        return data

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            raise RemoteProtocolError("the server switched protocols") from exc
        except httptools.HttpParserError as exc:
            raise RemoteProtocolError(f"malformed response: {exc}") from exc

    async def read_head(self, head_only: bool, read_timeout: float | None) -> None:
        self._reset()
        self.head_only = head_only
        later = True  # the answer to a request just sent is not here yet
        while not self.headers_done:
            data = await self._receive(read_timeout, later)
            later = False
            if not data:
                if self.received:
                    raise RemoteProtocolError("the server closed the connection mid-head")
                raise _Stale
            self.received += len(data)
            self._feed(data)
        if head_only:
            # llhttp cannot be told that the request was HEAD: the answer has no body
            # whatever its headers say, and the next answer needs a fresh parser.
            self.complete = True
            self.body.clear()
            self.parser = httptools.HttpResponseParser(self)

    async def receive_body(self, read_timeout: float | None) -> bytes:
        while not self.body:
            if self.complete:
                return b""
            data = await self._receive(read_timeout)
            if not data:
                if self.framed:
                    raise RemoteProtocolError("the server closed the connection mid-body")
                self.complete = True
                self.keep_alive = False
                return b""
            self._feed(data)
        body = self.body
        piece = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        return piece


class Response:
    """The status and headers of an answer; the body is read on demand.

    Close it (`aclose`, or use it as an async context manager) to free its pool slot; a
    body read to its end frees the slot by itself.
    """

    __slots__ = ("_conn", "_lease", "_read_timeout", "headers", "reason", "status")

    def __init__(self, conn: _Connection, lease: Lease, read_timeout: float | None) -> None:
        self._conn = conn
        self._lease: Lease | None = lease
        self._read_timeout = read_timeout
        self.status = conn.status
        self.reason = conn.reason
        self.headers = conn.headers
        if conn.complete and not conn.body:
            self._finish()

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lowercase), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def complete(self) -> bool:
        """Whether the rest of the body is here already: reading it will not wait."""
        return self._lease is None or self._conn.complete

    def _finish(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release(self._conn.complete and self._conn.keep_alive)

    async def receive_some(self) -> bytes:
        """The next piece of the body; b"" at its end.

        Raises:
            ReadTimeout: one read took longer than the client's read_timeout.
            RemoteProtocolError: the body was malformed or cut short.
        """
        if self._lease is None:
            # Finished (the connection went back to the pool, where another request may be
            # using it now) or aborted: nothing on that connection is this response's.
            # A cancellation point only: the response's head read already yielded to the
            # scheduler, and a scheduler pass here would let the server's writer send the
            # relayed body on its own, apart from its end (one more send per answer).
            await trio.lowlevel.checkpoint_if_cancelled()
            return b""
        try:
            piece = await self._conn.receive_body(self._read_timeout)
        except BaseException:
            self._abort()
            raise
        if self._conn.complete and not self._conn.body:
            self._finish()
        if not piece:
            await trio.lowlevel.checkpoint_if_cancelled()
        return piece

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; `ResponseTooLarge` if it is longer than `limit` bytes."""
        pieces = []
        size = 0
        while piece := await self.receive_some():
            size += len(piece)
            if limit is not None and size > limit:
                self._abort()
                raise ResponseTooLarge(f"the response body is larger than {limit} bytes")
            pieces.append(piece)
        return b"".join(pieces)

    def _abort(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release(False)

    def close(self) -> None:
        """Free the pool slot now: the connection is reused only if the body was read to its
        end, and closed otherwise. Idempotent; never blocks, so it needs no shield."""
        if self._lease is not None:
            self._finish() if self._conn.complete and not self._conn.body else self._abort()

    async def aclose(self) -> None:
        """`close`, then a cancellation point (the head read already yielded to the scheduler).

        Idempotent, and safe under cancellation (the slot is freed before the check).
        """
        self.close()
        await trio.lowlevel.checkpoint_if_cancelled()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        piece = await self.receive_some()
        if not piece:
            raise StopAsyncIteration
        return piece

    def __repr__(self) -> str:
        return f"<Response {self.status}>"


class Client:
    """An HTTP/1.1 client with a LIFO keep-alive pool per origin.

    Args:
        pool_size: at most this many connections per origin (scheme, host, port).
        connect_timeout: seconds to open a connection, TLS handshake included.
        read_timeout: seconds each read may take, or None for no limit.
        ssl_context: the TLS context for https; by default the system trust store.
        ca_file: a PEM file of extra CAs to trust (ignored if `ssl_context` is given).
        trust_env: use HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY.
    """

    def __init__(
        self,
        *,
        pool_size: int = 100,
        connect_timeout: float = 5.0,
        read_timeout: float | None = 600.0,
        ssl_context: ssl.SSLContext | None = None,
        ca_file: str | None = None,
        trust_env: bool = True,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._pool = Pool(pool_size)
        self._ssl_context = ssl_context
        self._ca_file = ca_file
        self._proxies = ProxySettings.from_environment() if trust_env else ProxySettings({})
        self._proxy_cache: dict[tuple[str, str], Proxy | None] = {}
        self._watchdog = _ReadWatchdog()

    def statistics(self) -> PoolStatistics:
        """A snapshot of the connection pool, all origins added up."""
        return self._pool.statistics()

    async def aclose(self) -> None:
        """Close every idle connection; responses still open close theirs when closed."""
        self._pool.close()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _proxy_for(self, scheme: str, host: str) -> Proxy | None:
        key = (scheme, host)
        if key not in self._proxy_cache:
            self._proxy_cache[key] = self._proxies.proxy_for(scheme, host)
        return self._proxy_cache[key]

    def _context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = client_ssl_context(self._ca_file)
        return self._ssl_context

    async def request(
        self,
        method: bytes | str,
        url: str,
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes = b"",
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - each phase has its own error
    ) -> Response:
        """Send a request; return when the status and headers of the answer arrived.

        Header names must be lowercase; Host and Content-Length are added unless given.

        Raises:
            PoolTimeout, ConnectTimeout, WriteTimeout, ReadTimeout: see the module docstring.
            ConnectError, TLSError: the connection could not be opened.
            RemoteProtocolError: the answer was not valid HTTP/1.1.
        """
        if isinstance(method, str):
            method = method.encode("ascii")
        origin, target, host_header = _split_url(url)
        scheme, host, port = origin
        proxy = self._proxy_for(scheme, host)
        head = self._head(method, url, target, host_header, headers or [], body, scheme, proxy)
        head_only = method == b"HEAD"
        if timeout is None:
            # No scope to pay for: nothing to tell apart when nothing can expire.
            return await self._exchange(origin, proxy, head, body, head_only, [PoolTimeout])
        phase: list[Callable[[str], HTTPError]] = [PoolTimeout]
        with trio.CancelScope(deadline=trio.current_time() + timeout):
            return await self._exchange(origin, proxy, head, body, head_only, phase)
        raise phase[0](f"{host}:{port}: the request's timeout of {timeout} s expired")

    async def _exchange(
        self,
        origin: tuple[str, str, int],
        proxy: Proxy | None,
        head: bytes,
        body: bytes,
        head_only: bool,
        phase: list[Callable[[str], HTTPError]],
    ) -> Response:
        """Send a request and read the head of its answer; `phase[0]` says where it waits."""
        lease = await self._pool.acquire(origin)
        try:
            for attempt in (0, 1):
                conn = lease.take_idle() if attempt == 0 else None
                assert conn is None or isinstance(conn, _Connection)
                if conn is None:
                    phase[0] = ConnectTimeout
                    conn = await self._connect(origin, proxy)
                    lease.attach(conn)
                try:
                    phase[0] = WriteTimeout
                    if len(body) < 65536:
                        await self._send(conn, head + body)
                    else:
                        await self._send(conn, head)
                        await self._send(conn, body)
                    phase[0] = ReadTimeout
                    await conn.read_head(head_only, self.read_timeout)
                except _Stale:
                    if attempt == 0 and lease.reused:
                        lease.discard()
                        continue
                    _, host, port = origin
                    raise RemoteProtocolError(
                        f"{host}:{port} closed the connection without answering"
                    ) from None
                return Response(conn, lease, self.read_timeout)
        except BaseException:
            lease.release(False)
            raise
        raise AssertionError("unreachable: the second attempt returns or raises")

    @staticmethod
    async def _send(conn: _Connection, data: bytes) -> None:
        try:
            await conn.transport.send_all(data)
        except trio.BrokenResourceError as exc:
            raise _Stale from exc

    def _head(
        self,
        method: bytes,
        url: str,
        target: bytes,
        host_header: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        scheme: str,
        proxy: Proxy | None,
    ) -> bytes:
        if proxy is not None and scheme == "http":
            target = url.encode("ascii")
        parts = [method, b" ", target, b" HTTP/1.1\r\n"]
        has_host = has_length = False
        for name, value in headers:
            if name == b"host":
                has_host = True
            elif name == b"content-length":
                has_length = True
            parts += (name, b": ", value, b"\r\n")
        if not has_host:
            parts += (b"host: ", host_header, b"\r\n")
        if not has_length and (body or method in _BODY_METHODS):
            parts.append(b"content-length: %d\r\n" % len(body))
        if proxy is not None and scheme == "http" and proxy.authorization is not None:
            parts += (b"proxy-authorization: ", proxy.authorization, b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    async def _connect(self, origin: tuple[str, str, int], proxy: Proxy | None) -> _Connection:
        scheme, host, port = origin
        where = f"{host}:{port}" if proxy is None else f"{host}:{port} via proxy {proxy.host}"
        with trio.move_on_after(self.connect_timeout):
            try:
                stream = await trio.open_tcp_stream(
                    host if proxy is None else proxy.host, port if proxy is None else proxy.port
                )
            except OSError as exc:
                raise ConnectError(f"cannot connect to {where}: {exc.strerror or exc}") from exc
            try:
                if proxy is not None and scheme == "https":
                    await _tunnel(stream, host, port, proxy)
                if scheme == "http":
                    return _Connection(SocketTransport.from_trio(stream.socket), self._watchdog)
                tls = trio.SSLStream(
                    stream, self._context(), server_hostname=host, https_compatible=True
                )
                await tls.do_handshake()
                return _Connection(TLSTransport(tls), self._watchdog)
            except trio.BrokenResourceError as exc:
                stream.socket.close()
                raise _tls_error(where, exc) from exc
            except BaseException:
                stream.socket.close()
                raise
        raise ConnectTimeout(f"cannot connect to {where} within {self.connect_timeout} s")


def _tls_error(where: str, exc: trio.BrokenResourceError) -> ConnectError:
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        problem = cause.verify_message or cause.reason or str(cause)
        return TLSError(f"TLS to {where} failed: {problem}")
    if isinstance(cause, ssl.SSLError):
        return TLSError(f"TLS to {where} failed: {cause.reason or cause}")
    return ConnectError(f"{where} closed the connection while connecting")


class _TunnelAnswer:
    """Collects the head of a proxy's answer to CONNECT."""

    def __init__(self) -> None:
        self.done = False

    def on_headers_complete(self) -> None:
        self.done = True


async def _tunnel(stream: trio.SocketStream, host: str, port: int, proxy: Proxy) -> None:
    """Ask the proxy for a tunnel to host:port; raise ConnectError unless it agrees."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = f"CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n".encode("ascii")
    if proxy.authorization is not None:
        request += b"proxy-authorization: " + proxy.authorization + b"\r\n"
    try:
        await stream.send_all(request + b"\r\n")
        answer = _TunnelAnswer()
        parser = httptools.HttpResponseParser(answer)
        while not answer.done:
            data = await stream.receive_some(65536)
            if not data:
                raise ConnectError(f"proxy {proxy.host} closed the connection on CONNECT")
            try:
                parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise ConnectError(f"proxy {proxy.host} answered CONNECT badly") from exc
    except trio.BrokenResourceError as exc:
        raise ConnectError(f"proxy {proxy.host} closed the connection on CONNECT") from exc
    status = parser.get_status_code()
    if not 200 <= status < 300:
        raise ConnectError(f"proxy {proxy.host} refused to CONNECT to {authority}: {status}")
