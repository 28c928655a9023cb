"""A lean HTTP/1.1 client for load generation: pre-encoded requests over kept-alive sockets.

httpx on trio costs about half a millisecond of CPU per request, as much as the servers
being measured; a load generator that slow would measure itself. This client sends bytes
prepared in advance and parses only what it needs from the answer (the status, the body's
framing, the moment the first body byte arrived), a few microseconds per request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import msgspec
import trio

__all__ = [
    "Answer",
    "Connection",
    "ConnectionPool",
    "COUNTER_DIGITS",
    "ProtocolError",
    "RequestMaker",
    "chat_body_parts",
    "chat_requests",
]

_RECEIVE = 65536
COUNTER_DIGITS = 12
"""Digits of the counter that makes each request's text distinct."""


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 this client understands, or the connection broke."""


class Answer(msgspec.Struct, frozen=True):
    """One answer, read in full.

    Attributes:
      status: the HTTP status code.
      first_byte: `trio.current_time()` when the first byte of the body arrived (for a
        stream, its first event); None for an empty body.
      size: the body's length in bytes, without the chunked framing.
    """

    status: int
    first_byte: float | None
    size: int


RequestMaker = Callable[[int], bytes]
"""The bytes of the i-th request of a run (request line, headers and body)."""


def chat_body_parts(model: str, *, stream: bool) -> tuple[bytes, bytes]:
    """An OpenAI chat request body, cut where a `COUNTER_DIGITS`-digit request counter goes.

    Every request asks for the same answer shape; only the counter in the user message
    changes, so that no cache answers twice, and the body's length stays the same.
    """
    marker = "@" * COUNTER_DIGITS
    body = msgspec.json.encode(
        {
            "model": model,
            "stream": stream,
            "messages": [{"role": "user", "content": f"benchmark request {marker}"}],
        }
    )
    before, after = body.split(marker.encode())
    return before, after


def chat_requests(
    host: str,
    port: int,
    *,
    model: str,
    stream: bool,
    headers: Mapping[str, str] | None = None,
    path: str = "/v1/chat/completions",
    first: int = 0,
) -> RequestMaker:
    """OpenAI chat requests with distinct texts of one length (see `chat_body_parts`).

    Request i carries the counter `first + i`; give each run its own range of counters,
    or a cache will answer a run with what an earlier one stored. The head, with its
    content-length, is encoded once.
    """
    before, after = chat_body_parts(model, stream=stream)
    lines = [
        f"POST {path} HTTP/1.1",
        f"host: {host}:{port}",
        "content-type: application/json",
        f"content-length: {len(before) + COUNTER_DIGITS + len(after)}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + before

    def make(i: int) -> bytes:
        return b"%b%012d%b" % (head, first + i, after)

    return make


class Connection:
    """One kept-alive HTTP/1.1 connection that sends a request and reads its whole answer."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        """Connect to `host:port`."""
        return cls(await trio.open_tcp_stream(host, port))

    async def aclose(self) -> None:
        """Close the socket (idempotent)."""
        self.closed = True
        await self._stream.aclose()

    async def exchange(self, request: bytes) -> Answer:
        """Send one request and read its answer to the end.

        Raises:
          ProtocolError: the connection broke or the answer is malformed; the connection
            is closed and must not be used again.
        """
        try:
            await self._stream.send_all(request)
            return await self._read_answer()
        except (ProtocolError, trio.BrokenResourceError, ValueError, IndexError) as exc:
            await self.aclose()
            if isinstance(exc, ProtocolError):
                raise
            raise ProtocolError(f"{type(exc).__name__}: {exc}") from exc

    async def _fill(self) -> None:
        data = await self._stream.receive_some(_RECEIVE)
        if not data:
            raise ProtocolError("the server closed the connection")
        self._buffer += data

    async def _read_answer(self) -> Answer:
        buffer = self._buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            await self._fill()
        lines = bytes(buffer[:end]).split(b"\r\n")
        del buffer[: end + 4]
        status = int(lines[0].split(b" ", 2)[1])
        length: int | None = None
        chunked = close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if chunked:
            first, size = await self._read_chunked()
        elif length is not None:
            first, size = await self._read_exactly(length), length
        else:
            raise ProtocolError("an answer without content-length or chunked framing")
        if close:
            await self.aclose()
        return Answer(status, first, size)

    async def _read_exactly(self, length: int) -> float | None:
        buffer = self._buffer
        if not length:
            return None
        if not buffer:
            await self._fill()
        first = trio.current_time()
        while len(buffer) < length:
            await self._fill()
        del buffer[:length]
        return first

    async def _read_chunked(self) -> tuple[float | None, int]:
        buffer = self._buffer
        first: float | None = None
        size = 0
        while True:
            while (eol := buffer.find(b"\r\n")) < 0:
                await self._fill()
            piece = int(bytes(buffer[:eol]).split(b";", 1)[0], 16)
            if piece == 0:
                del buffer[: eol + 2]
                # Trailers, if any, then the empty line that ends the body.
                while (eol := buffer.find(b"\r\n")) != 0:
                    if eol < 0:
                        await self._fill()
                    else:
                        del buffer[: eol + 2]
                del buffer[:2]
                return first, size
            if first is None:
                first = trio.current_time()
            need = eol + 2 + piece + 2
            while len(buffer) < need:
                await self._fill()
            del buffer[:need]
            size += piece


class ConnectionPool:
    """At most `size` kept-alive connections to one server, opened as they are needed.

    A request waits for a free connection when all are busy; an open-loop run measures
    that wait as latency, as a client with this many connections would feel it.
    """

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host = host
        self.port = port
        self._limiter = trio.CapacityLimiter(size)
        self._idle: list[Connection] = []

    async def exchange(self, request: bytes) -> Answer:
        """Send a request on a free connection and read its answer.

        Raises:
          ProtocolError: the connection broke (it is dropped; the next request opens another).
          OSError: no connection could be opened.
        """
        async with self._limiter:
            connection = self._idle.pop() if self._idle else None
            if connection is None:
                connection = await Connection.open(self.host, self.port)
            try:
                answer = await connection.exchange(request)
            except BaseException:
                if not connection.closed:
                    await connection.aclose()
                raise
            if not connection.closed:
                self._idle.append(connection)
            return answer

    async def aclose(self) -> None:
        """Close every idle connection."""
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.aclose()
