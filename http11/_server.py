"""HTTP/1.1 server on trio; llhttp (httptools) parses, this module does everything else.

Tasks. Each connection has one task that runs handlers one request at a time (the *main*
task) and one long-lived *reader* task that owns the socket's receive side: it feeds llhttp,
whose callbacks only append, and queues what they produce (a whole request, a "send 100
Continue" marker, an error answer, or "close"). Because the reader keeps reading while a
handler runs, a client that hangs up (end of file or reset) cancels the handler at once.
Bytes of a pipelined next request are parsed and queued instead; the reader stops reading
while anything is queued, so read-ahead is bounded by one receive buffer plus one request.
A connection that streams gets a third long-lived task, the *writer* (see below). No task,
nursery or cancel scope per request: a hang-up, a write timeout or the end of the grace
period cancels the connection's own scope, which cancels its handler. Timeouts are checked
by one server-wide ticker task a few times per smallest timeout (at most once a second),
so the per-request cost of a timeout is storing a timestamp; they fire up to a tick late.

Writes. `Responder.respond` sends the whole answer with one `send_all` from the handler's
task. For streamed answers `Responder.write` appends the framed piece to a per-connection
buffer and wakes the writer task; it does not yield (it only checks for cancellation), so
every piece written before the handler next blocks goes out in one `send_all` when the
writer runs, which is as soon as the handler waits for anything: a lone piece is never
delayed. When more than `_HIGH_WATER` bytes are buffered or in flight, `write` waits for
the writer: a client that stops reading makes the handler (and so its upstream) wait.
A send that has not finished after `write_timeout` closes the connection, which cancels the
handler.

Limits and timeouts. A request head larger than `max_head_bytes` or with more than
`max_headers` headers gets 431; a body larger than `max_body_bytes` (declared, or counted as
chunks arrive) gets 413, and a declared one is refused before any ``100 Continue``. A head
or body that is not complete `read_timeout` seconds after its first byte gets 408; a
keep-alive connection idle for `keep_alive_timeout` is closed. Connections beyond
`max_connections` are not accepted until one closes: they wait in the listen backlog.

Smuggling. llhttp (strict by default) refuses Content-Length with Transfer-Encoding,
duplicate Content-Lengths, bad chunk sizes, obs-fold and a final coding other than chunked;
we also refuse any Transfer-Encoding but plain ``chunked`` and versions other than 1.0/1.1.
Each refusal is a 400 after which nothing more is read from the connection.

Shutdown. `Server.shutdown()` stops accepting, closes idle connections, lets running
handlers finish for up to `grace_period`, then sets `Responder.shutting_down` and cancels
them; a handler may still write a last piece from a shielded ``finally`` within
`_FINAL_WRITE_SECONDS`.
"""

from __future__ import annotations

import logging
import socket as _socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final
from urllib.parse import unquote

import httptools
import trio

from ._tls import server_ssl_context
from ._transport import SocketTransport, TLSTransport, Transport

__all__ = [
    "ErrorPage",
    "Handler",
    "Request",
    "Responder",
    "Server",
    "ServerConfig",
    "plain_error_page",
    "serve",
]

logger = logging.getLogger("http11.server")

_HIGH_WATER: Final = 64 * 1024
_FINAL_WRITE_SECONDS: Final = 1.0
_LINGER_SECONDS: Final = 1.0
_MIN_TICK: Final = 0.05
_MAX_TICK: Final = 1.0
_LINGER_BYTES: Final = 1024 * 1024

_STATUS_LINES: Final = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("ascii")) for s in HTTPStatus
}
_NO_BODY_STATUSES: Final = frozenset({204, 304})
_CHUNKED_HEADER: Final = b"transfer-encoding: chunked\r\n"
_CLOSE_HEADER: Final = b"connection: close\r\n"
_KEEP_ALIVE_HEADER: Final = b"connection: keep-alive\r\n"
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d \r\n" % status


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Limits, timeouts and TLS files of a `Server`; times are in seconds."""

    max_body_bytes: int = 10 * 1024 * 1024
    max_head_bytes: int = 64 * 1024
    max_headers: int = 100
    max_connections: int = 10_000
    read_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    write_timeout: float = 30.0
    grace_period: float = 10.0
    backlog: int = 4096
    certfile: str | None = None
    keyfile: str | None = None


class Request:
    """One parsed request, body already read.

    Header names are lowercased; values are as received. `target` is the raw request
    target (path and query); `path` is its percent-decoded path.
    """

    __slots__ = ("body", "client", "headers", "http_version", "keep_alive", "method", "target")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        http_version: str,
        keep_alive: bool,
        body: bytes,
        client: tuple[str, int] | None,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = http_version
        self.keep_alive = keep_alive
        self.body = body
        self.client = client

    @property
    def path(self) -> str:
        return unquote(self.target.partition(b"?")[0].decode("latin-1"))

    @property
    def query(self) -> bytes:
        return self.target.partition(b"?")[2]

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lowercase), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def __repr__(self) -> str:
        # Never show header values or the body: they may carry secrets.
        return f"<Request {self.method.decode('latin-1')} {self.path}>"


Handler = Callable[[Request, "Responder"], Awaitable[None]]

ErrorPage = Callable[[int], tuple[list[tuple[bytes, bytes]], bytes]]
"""Renders the server's own error answers (400, 408, 413, 431, ...): status to (headers,
body), so an application can give them its own shape (the headers include the content
type; the server adds the length and `connection: close`)."""

_PLAIN = [(b"content-type", b"text/plain")]


def plain_error_page(status: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The default error answer: the status's reason phrase as plain text."""
    return _PLAIN, HTTPStatus(status).phrase.encode("ascii") + b"\n"


class _Reject(Exception):
    """Raised in a parser callback to answer `status` and stop reading."""

    def __init__(self, status: int) -> None:
        self.status = status


class _Answer:
    """A queued error answer; the connection closes after it."""

    __slots__ = ("status",)

    def __init__(self, status: int) -> None:
        self.status = status


def _rejected_status(error: httptools.HttpParserCallbackError) -> int:
    """The status a parser callback asked for (400 when it failed otherwise).

    Kept out of the reader's frame: the callback's exception holds a traceback whose
    frames lead back to that frame, and a local there would make a reference cycle.
    """
    reject = error.__context__
    return reject.status if isinstance(reject, _Reject) else 400


_SEND_CONTINUE: Final = object()
_CLOSE: Final = object()

_QueueItem = Request | _Answer | object


class _Wait:
    """Where one task at a time waits until another wakes it.

    A `trio.lowlevel.ParkingLot` for a single task, without its per-call costs (a dict, a
    generator per `unpark`): each of the connection's waits has exactly one possible
    waiter. Truthy while a task waits.
    """

    __slots__ = ("task",)

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None

    def __bool__(self) -> bool:
        return self.task is not None

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self.task = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def park(self) -> None:
        assert self.task is None, "only one task may wait here"
        self.task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def unpark(self) -> None:
        task = self.task
        if task is not None:
            self.task = None
            trio.lowlevel.reschedule(task)


# How a streamed body is framed.
_CHUNKED, _IDENTITY, _NO_BODY = 0, 1, 2


class Responder:
    """Answers one request: either `respond` once, or `start`, `write`..., `end`.

    `shutting_down` turns True when the server's grace period ran out and it is cancelling
    the handler; a handler can then write a final piece from a shielded ``finally``.
    Header names given to `respond` and `start` must be lowercase.
    """

    __slots__ = (
        "_close",
        "_conn",
        "_framing",
        "_request",
        "aborted",
        "ended",
        "shutting_down",
        "started",
    )

    def __init__(self, conn: _Connection, request: Request) -> None:
        self._conn = conn
        self._request = request
        self._close = not request.keep_alive or conn.closing
        self._framing = _NO_BODY
        self.started = False
        self.ended = False
        self.aborted = False
        self.shutting_down = False

    def _head(self, status: int, headers: list[tuple[bytes, bytes]]) -> tuple[list[bytes], bool]:
        parts = [_status_line(status)]
        has_length = False
        for name, value in headers:
            if name == b"content-length":
                has_length = True
            elif name == b"connection" and value.lower() == b"close":
                self._close = True
                continue
            parts += (name, b": ", value, b"\r\n")
        if self._conn.closing:
            self._close = True
        if self._close:
            parts.append(_CLOSE_HEADER)
        elif self._request.http_version == "1.0":
            parts.append(_KEEP_ALIVE_HEADER)
        return parts, has_length

    async def respond(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b""
    ) -> None:
        """Send the whole answer in one write; Content-Length is added unless given."""
        if self.started:
            raise RuntimeError("the response was already started")
        self.started = self.ended = True
        parts, has_length = self._head(status, headers)
        if status not in _NO_BODY_STATUSES and status >= 200:
            if not has_length:
                parts.append(b"content-length: %d\r\n" % len(body))
            parts.append(b"\r\n")
            if self._request.method != b"HEAD":
                parts.append(body)
        else:
            parts.append(b"\r\n")
        await self._conn.send(b"".join(parts))

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Send the status and headers of a streamed answer.

        The body is chunked, unless `headers` has a Content-Length (then `write` sends the
        bytes as they are) or the request is HTTP/1.0 (then the body ends when the
        connection closes).
        """
        if self.started:
            raise RuntimeError("the response was already started")
        self.started = True
        parts, has_length = self._head(status, headers)
        if self._request.method == b"HEAD" or status in _NO_BODY_STATUSES or status < 200:
            self._framing = _NO_BODY
        elif has_length:
            self._framing = _IDENTITY
        elif self._request.http_version == "1.0":
            self._framing = _IDENTITY
            if not self._close:
                self._close = True
                parts[-1] = _CLOSE_HEADER
        else:
            self._framing = _CHUNKED
            parts.append(_CHUNKED_HEADER)
        parts.append(b"\r\n")
        self._conn.buffer(b"".join(parts))
        await trio.lowlevel.checkpoint_if_cancelled()

    async def write(self, data: bytes) -> None:
        """Queue a piece of the body; waits only while too much is unsent (backpressure)."""
        if not self.started or self.ended:
            raise RuntimeError("write() needs start() first and no end() yet")
        if data and self._framing != _NO_BODY:
            if self._framing == _CHUNKED:
                data = b"%x\r\n%b\r\n" % (len(data), data)
            if self.shutting_down:
                await self._conn.send_final(data)
                return
            self._conn.buffer(data)
        conn = self._conn
        if conn.wsize > _HIGH_WATER:
            await conn.backpressure()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()

    async def abort(self) -> None:
        """Cut a started answer: send what was written, then close without ending the body.

        The client sees a truncated body (a chunked stream without its last chunk, or
        fewer bytes than the Content-Length), which is how HTTP/1.1 says "this answer
        broke"; the connection serves no further request.
        """
        if not self.started:
            raise RuntimeError("abort() needs start() first")
        self.ended = self.aborted = True
        self._close = True
        await self._conn.drain()

    async def end(self) -> None:
        """Finish a streamed answer and wait until every byte of it was sent."""
        if self.ended:
            await trio.lowlevel.checkpoint_if_cancelled()
            return
        if not self.started:
            raise RuntimeError("end() needs start() first")
        self.ended = True
        last = _LAST_CHUNK if self._framing == _CHUNKED else b""
        if self.shutting_down:
            await self._conn.send_final(last)
            return
        if last:
            self._conn.buffer(last, wake=False)
        await self._conn.drain()


class _Connection:
    """One client connection: the reader task, the main task and, if needed, the writer."""

    def __init__(
        self, server: Server, transport: Transport, client: tuple[str, int] | None
    ) -> None:
        self.server = server
        self.config = server.config
        self.transport = transport
        self.client = client
        self.parser = httptools.HttpRequestParser(self)
        self.closing = server.closing
        self.broken = False
        self.scope = trio.CancelScope()  # the whole connection; replaced by its nursery's
        self.nursery: trio.Nursery
        # Reader side.
        self.queue: deque[_QueueItem] = deque()
        self.queue_lot = _Wait()
        self.reader_lot = _Wait()
        self.read_scope = trio.CancelScope()
        self.send_started: float | None = None  # when the send in progress began
        self.busy = False
        self.idle_since = trio.current_time()
        # Parser state of the request being read.
        self.partial = False
        self.in_head = self.began = False
        self.head_bytes = self.raw_head_bytes = 0
        self.request_started = 0.0
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.body_size = 0
        self.content_length: bytes | None = None
        self.transfer_encoding: bytes | None = None
        self.expect_continue = False
        self.continue_queued = False
        self.headers_done = False
        self.keep_alive = True
        # Handler side.
        self.responder: Responder | None = None
        # Writer side.
        self.wbuf: list[bytes] = []
        self.wsize = 0
        self.writer_lot = _Wait()
        self.drain_lot = _Wait()
        self.writer_started = False

    # -- llhttp callbacks: they only record; the reader acts after feed_data returns ------

    def on_message_begin(self) -> None:
        self.partial = self.in_head = self.began = True
        self.head_bytes = self.raw_head_bytes = 0
        self.request_started = trio.current_time()
        self.url = b""
        self.headers = []
        self.body = []
        self.body_size = 0
        self.content_length = self.transfer_encoding = None
        self.expect_continue = self.continue_queued = self.headers_done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        headers = self.headers
        headers.append((name, value))
        self.head_bytes += len(name) + len(value) + 4
        if len(headers) > self.config.max_headers or self.head_bytes > self.config.max_head_bytes:
            raise _Reject(431)
        if name == b"content-length":
            self.content_length = value
        elif name == b"transfer-encoding":
            self.transfer_encoding = value
        elif name == b"expect":
            self.expect_continue = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.headers_done = True
        if self.head_bytes + len(self.url) > self.config.max_head_bytes:
            raise _Reject(431)
        if self.parser.get_http_version() not in ("1.1", "1.0"):
            raise _Reject(400)
        te = self.transfer_encoding
        if te is not None and (self.content_length is not None or te.strip().lower() != b"chunked"):
            raise _Reject(400)
        if (
            self.content_length is not None
            and int(self.content_length) > self.config.max_body_bytes
        ):
            raise _Reject(413)
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.config.max_body_bytes:
            raise _Reject(413)
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.partial = False
        body = self.body
        self.push(
            Request(
                self.parser.get_method(),
                self.url,
                self.headers,
                self.parser.get_http_version(),
                self.keep_alive,
                body[0] if len(body) == 1 else b"".join(body),
                self.client,
            )
        )

    # -- reader -----------------------------------------------------------------------

    def push(self, item: _QueueItem) -> None:
        self.queue.append(item)
        self.queue_lot.unpark()

    def check_timeouts(self, now: float) -> None:
        """Called by the server's ticker: enforce the read, idle and write timeouts."""
        config = self.config
        started = self.send_started
        if started is not None and now - started > config.write_timeout:
            self.fail()
        elif self.partial:
            if not self.busy and now - self.request_started > config.read_timeout:
                self.read_scope.cancel()
        elif not self.busy and not self.queue and now - self.idle_since > config.keep_alive_timeout:
            self.read_scope.cancel()

    async def reader(self) -> None:
        with self.read_scope:
            await self.read_loop()
        if self.read_scope.cancelled_caught:
            self.push(_Answer(408) if self.partial else _CLOSE)

    async def read_loop(self) -> None:
        parser = self.parser
        max_head = self.config.max_head_bytes
        receive_some = self.transport.receive_some
        receive_later = self.transport.receive_later
        while True:
            while len(self.queue) > 1:
                await self.reader_lot.park()
            # After a whole request the next one is most likely not here yet: wait first.
            data = await (receive_some() if self.partial else receive_later())
            if not data:
                # The client hung up: cancel its handler (and whatever is queued) at once.
                self.push(_CLOSE)
                if self.busy:
                    self.fail()
                return
            was_in_head = self.in_head
            self.began = False
            try:
                parser.feed_data(data)
            except httptools.HttpParserCallbackError as exc:
                self.push(_Answer(_rejected_status(exc)))
                return
            except httptools.HttpParserUpgrade:
                # We speak no other protocol: answer the request (llhttp has queued it), then
                # close, since what follows it on the connection is not HTTP/1.1.
                for item in self.queue:
                    if isinstance(item, Request):
                        item.keep_alive = False
                self.push(_CLOSE)
                return
            except httptools.HttpParserError:
                self.push(_Answer(400))
                return
            # Bytes of a header line llhttp has not finished yet are invisible to the
            # callbacks: count raw bytes while a head is incomplete across receives.
            if was_in_head and self.in_head and not self.began:
                self.raw_head_bytes += len(data)
            if self.in_head and self.raw_head_bytes > max_head:
                self.push(_Answer(431))
                return
            if (
                self.partial
                and self.headers_done
                and self.expect_continue
                and not self.continue_queued
            ):
                self.continue_queued = True
                self.push(_SEND_CONTINUE)

    # -- main -------------------------------------------------------------------------

    async def next_item(self) -> _QueueItem:
        while not self.queue:
            await self.queue_lot.park()
        item = self.queue.popleft()
        if isinstance(item, Request):
            self.busy = True
        if len(self.queue) <= 1:
            self.reader_lot.unpark()
        return item

    async def main(self) -> None:
        while True:
            item = await self.next_item()
            if isinstance(item, Request):
                if not await self.run_handler(item):
                    return
            elif item is _SEND_CONTINUE:
                await self.send(_CONTINUE)
            elif isinstance(item, _Answer):
                await self.answer_and_close(item.status)
                return
            else:
                return

    async def run_handler(self, request: Request) -> bool:
        """Run the handler for `request`; True when the connection may serve another.

        A hang-up, a write timeout or the end of the grace period cancels the whole
        connection, which is how the handler gets cancelled: no scope per request.
        """
        responder = self.responder = Responder(self, request)
        try:
            await self.server.handler(request, responder)
        except Exception:
            logger.exception(
                "handler failed: %s %s", request.method.decode("latin-1"), request.path
            )
            if responder.started:
                # Deliver what the handler wrote; the truncated body then tells the
                # client that something failed.
                await self.drain()
                return False
            await responder.respond(500, [], b"Internal Server Error\n")
        else:
            if not responder.started:
                logger.error(
                    "handler returned without responding: %s %s",
                    request.method.decode("latin-1"),
                    request.path,
                )
                await responder.respond(500, [], b"Internal Server Error\n")
            elif not responder.ended:
                await responder.end()
        self.responder = None
        if self.broken or responder._close or self.closing:
            return False
        self.busy = False
        self.idle_since = now = trio.current_time()
        if self.partial:
            self.request_started = now  # a pipelined request's clock starts now
        return True

    async def answer_and_close(self, status: int) -> None:
        headers, body = self.server.error_page(status)
        head = b"".join(b"%b: %b\r\n" % header for header in headers)
        await self.send(
            b"%b%b%bcontent-length: %d\r\n\r\n%b"
            % (_status_line(status), _CLOSE_HEADER, head, len(body), body)
        )
        # Read what the client is still sending before closing: closing with unread
        # bytes makes the kernel send a reset, which can destroy the answer in flight.
        await self.transport.send_eof()
        with trio.move_on_after(_LINGER_SECONDS):
            received = 0
            while received < _LINGER_BYTES:
                data = await self.transport.receive_some()
                if not data:
                    break
                received += len(data)

    # -- writes -----------------------------------------------------------------------

    def fail(self) -> None:
        """The client stopped reading or went away: close, cancelling the handler."""
        self.broken = True
        self.scope.cancel()

    async def send(self, data: bytes) -> None:
        """Send now, from the caller's task (the writer buffer is empty here)."""
        responder = self.responder
        if responder is not None and responder.shutting_down:
            await self.send_final(data)
            return
        self.send_started = trio.current_time()
        try:
            await self.transport.send_all(data)
        except trio.BrokenResourceError:
            self.fail()
            await trio.lowlevel.checkpoint()
        finally:
            self.send_started = None

    async def send_final(self, data: bytes) -> None:
        """Send what is buffered plus `data` from a cancelled handler, within a short bound.

        The writer task was cancelled with the connection, so the handler's (shielded)
        task sends itself.
        """
        self.wbuf.append(data)
        data = b"".join(self.wbuf)
        self.wbuf.clear()
        with trio.move_on_after(_FINAL_WRITE_SECONDS):
            try:
                await self.transport.send_all(data)
            except trio.BrokenResourceError:
                self.broken = True

    def buffer(self, data: bytes, *, wake: bool = True) -> None:
        """Queue `data` for the writer; `wake=False` when `drain` follows at once."""
        if self.broken:
            return
        self.wbuf.append(data)
        self.wsize += len(data)
        if not wake:
            return
        if not self.writer_started:
            self.writer_started = True
            self.nursery.start_soon(self.writer)
        else:
            self.writer_lot.unpark()

    async def backpressure(self) -> None:
        while self.wsize > _HIGH_WATER and not self.broken:
            await self.drain_lot.park()
        await trio.lowlevel.checkpoint_if_cancelled()

    async def drain(self) -> None:
        """Wait until everything buffered was sent.

        When no send is in progress, the caller sends what is buffered itself: waking the
        writer and waiting for it would cost two task switches (the end of every stream).
        """
        wbuf = self.wbuf
        if wbuf and self.send_started is None and not self.broken:
            data = wbuf[0] if len(wbuf) == 1 else b"".join(wbuf)
            wbuf.clear()
            await self.send(data)
            self.wsize -= len(data)
        while self.wsize and not self.broken:
            await self.drain_lot.park()
        await trio.lowlevel.checkpoint_if_cancelled()

    async def writer(self) -> None:
        send_all = self.transport.send_all
        while True:
            while not self.wbuf:
                await self.writer_lot.park()
            data = self.wbuf[0] if len(self.wbuf) == 1 else b"".join(self.wbuf)
            self.wbuf.clear()
            self.send_started = trio.current_time()
            try:
                await send_all(data)
            except trio.BrokenResourceError:
                self.fail()
                return
            finally:
                self.send_started = None
            self.wsize -= len(data)
            self.drain_lot.unpark()

    def release(self) -> None:
        """Drop the parser once the connection is closed.

        The parser holds this object's callbacks and this object holds the parser: without
        breaking that cycle each closed connection (its buffers, tasks and scopes) would
        stay in memory until a full garbage collection.
        """
        del self.parser

    # -- shutdown ---------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        self.closing = True
        if not self.busy and not self.partial and not self.queue:
            self.scope.cancel()

    def cancel_handler(self) -> None:
        if self.responder is not None:
            self.responder.shutting_down = True
        self.scope.cancel()


class Server:
    """An HTTP/1.1 server running `handler` for each request.

    Start it in a nursery: ``urls = await nursery.start(server.serve)`` gives the URLs it
    listens on; `shutdown()` stops it gracefully and `serve` returns when it is done.
    """

    def __init__(
        self,
        handler: Handler,
        config: ServerConfig | None = None,
        *,
        error_page: ErrorPage | None = None,
    ) -> None:
        self.handler = handler
        self.config = config or ServerConfig()
        self.error_page = error_page or plain_error_page
        self.closing = False
        self.urls: list[str] = []
        self._ssl_context: ssl.SSLContext | None = None
        if self.config.certfile is not None:
            self._ssl_context = server_ssl_context(self.config.certfile, self.config.keyfile)
        self._slots = trio.Semaphore(self.config.max_connections)
        self._connections: set[_Connection] = set()
        self._shutdown = trio.Event()
        self._all_closed = trio.Event()

    @property
    def connection_count(self) -> int:
        """How many client connections are open now."""
        return len(self._connections)

    def shutdown(self) -> None:
        """Begin a graceful shutdown (see the module docstring); returns at once."""
        self._shutdown.set()

    async def serve(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        sock: _socket.socket | None = None,
        reuse_port: bool = False,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen and serve until `shutdown()`; reports the URLs through `task_status`.

        Args:
            host, port: where to bind, unless `sock` is given; port 0 picks a free port.
            sock: an already bound stdlib socket to listen on.
            reuse_port: bind with SO_REUSEPORT, so that several processes can share the port.
        """
        listener = await self._listen(host, port, sock, reuse_port)
        scheme = "https" if self._ssl_context is not None else "http"
        bound = listener.getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self.urls = [f"{scheme}://{shown}:{bound[1]}"]
        try:
            async with trio.open_nursery() as connections:
                connections.start_soon(self._tick)
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(self._accept_loop, listener, connections)
                    task_status.started(self.urls)
                    await self._shutdown.wait()
                    accepting.cancel_scope.cancel()
                listener.close()
                await self._drain_connections()
                connections.cancel_scope.cancel()
        finally:
            listener.close()

    async def _tick(self) -> None:
        """Check every connection's timeouts a few times per smallest timeout.

        One task for all connections replaces a cancel scope per read and per send: the
        per-request cost is recording a timestamp. Timeouts fire up to one tick late.
        """
        config = self.config
        smallest = min(config.read_timeout, config.keep_alive_timeout, config.write_timeout)
        period = max(_MIN_TICK, min(_MAX_TICK, smallest / 4))
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            for conn in list(self._connections):
                conn.check_timeouts(now)

    async def _listen(
        self, host: str, port: int, sock: _socket.socket | None, reuse_port: bool
    ) -> trio.socket.SocketType:
        if sock is not None:
            listener = trio.socket.from_stdlib_socket(sock)
        else:
            infos = await trio.socket.getaddrinfo(
                host, port, type=_socket.SOCK_STREAM, flags=_socket.AI_PASSIVE
            )
            family, type_, proto, _, address = infos[0]
            listener = trio.socket.socket(family, type_, proto)
            try:
                listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
                if reuse_port:
                    listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEPORT, 1)
                await listener.bind(address)
            except BaseException:
                listener.close()
                raise
        listener.listen(min(self.config.backlog, _socket.SOMAXCONN * 64))
        return listener

    async def _accept_loop(self, listener: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        while True:
            await self._slots.acquire()
            try:
                sock, address = await listener.accept()
            except OSError as exc:
                self._slots.release()
                # Out of file descriptors and the like: wait a little rather than spin.
                logger.warning("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            except BaseException:
                self._slots.release()
                raise
            nursery.start_soon(self._run_connection, sock, address)

    async def _run_connection(self, sock: trio.socket.SocketType, address: object) -> None:
        client = (address[0], address[1]) if isinstance(address, tuple) else None
        conn: _Connection | None = None
        transport: Transport | None = None
        try:
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            if self._ssl_context is None:
                transport = SocketTransport.from_trio(sock)
            else:
                stream = trio.SSLStream(
                    trio.SocketStream(sock),
                    self._ssl_context,
                    server_side=True,
                    https_compatible=True,
                )
                transport = TLSTransport(stream)
                with trio.move_on_after(self.config.read_timeout) as handshake:
                    await stream.do_handshake()
                if handshake.cancelled_caught:
                    return
            conn = _Connection(self, transport, client)
            self._connections.add(conn)
            async with trio.open_nursery() as nursery:
                conn.scope = nursery.cancel_scope
                conn.nursery = nursery
                if self.closing:
                    return
                nursery.start_soon(conn.reader)
                await conn.main()
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, ssl.SSLError):
            pass  # the client went away, or failed its TLS handshake
        except Exception:
            logger.exception("connection failed")
        finally:
            if transport is not None:
                transport.close()
            else:
                sock.close()
            if conn is not None:
                self._connections.discard(conn)
                conn.release()
            self._slots.release()
            if self.closing and not self._connections:
                self._all_closed.set()

    async def _drain_connections(self) -> None:
        self.closing = True
        for conn in list(self._connections):
            conn.begin_shutdown()
        if not self._connections:
            return
        with trio.move_on_after(self.config.grace_period):
            await self._all_closed.wait()
        for conn in list(self._connections):
            conn.cancel_handler()
        with trio.move_on_after(_FINAL_WRITE_SECONDS):
            await self._all_closed.wait()


async def serve(
    handler: Handler,
    config: ServerConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    sock: _socket.socket | None = None,
    reuse_port: bool = False,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `handler` until `shutdown_trigger()` returns (or forever), then shut down.

    ``urls = await nursery.start(serve, handler)`` reports the URLs listened on.
    """
    server = Server(handler, config)

    async def trigger() -> None:
        assert shutdown_trigger is not None
        await shutdown_trigger()
        server.shutdown()

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        await server.serve(
            host=host, port=port, sock=sock, reuse_port=reuse_port, task_status=task_status
        )
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        if shutdown_trigger is not None:
            nursery.start_soon(trigger)
        urls = await nursery.start(run)
        task_status.started(urls)
