"""The byte pipe under a connection: a plain trio socket, or a trio SSLStream.

Both sides of the engine speak to a `Transport`, so the HTTP code does not care whether TLS
is in the way. `close()` is synchronous, which lets cleanup run safely under cancellation.

Plain sockets skip trio's socket layer and drive a non-blocking stdlib socket themselves:
try the call first, and only when it would block wait with `trio.lowlevel.wait_readable`
or `wait_writable`. Trio's socket methods also yield to the scheduler after every call that
did not block; on a keep-alive connection that is one extra scheduler pass per read and per
write, a third of the engine's time. Here a call that did not block is a cancellation point
only, and for fairness every `_STREAK`-th call in a row that did not need to wait yields
(a fast client uploading a large body cannot hold the loop). The HTTP code already
serialises reads and sends, so trio's conflict detection would be pure overhead too.

A reset connection reads as end of file (b""): for both server and client a reset is "the
peer went away". Sending to a peer that went away raises `trio.BrokenResourceError`.
"""

from __future__ import annotations

import contextlib
import socket as _socket
from typing import Protocol

import trio

RECEIVE_SIZE = 65536
# Calls in a row that may complete without yielding to the scheduler.
_STREAK = 8


class Transport(Protocol):
    """What the HTTP code needs from a connection."""

    async def receive_some(self) -> bytes: ...

    async def receive_later(self) -> bytes: ...

    async def send_all(self, data: bytes) -> None: ...

    async def send_eof(self) -> None: ...

    def fileno(self) -> int: ...

    def interrupt(self) -> None:
        """Make a wait in progress on this connection end (ClosedResourceError or b"");
        the connection must be closed after it."""
        ...

    def close(self) -> None: ...


class SocketTransport:
    """A plain TCP connection over a non-blocking stdlib socket.

    Build it with `from_trio`; it owns the socket from then on.
    """

    __slots__ = ("_reads", "_sends", "sock")

    def __init__(self, sock: _socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._reads = 0  # reads in a row that did not wait
        self._sends = 0  # sends in a row that did not wait

    @classmethod
    def from_trio(cls, sock: trio.socket.SocketType) -> SocketTransport:
        """Take over the file descriptor of a connected trio socket (`sock` is left closed)."""
        return cls(_socket.socket(fileno=sock.detach()))

    def fileno(self) -> int:
        return self.sock.fileno()

    async def receive_some(self) -> bytes:
        sock = self.sock
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._reads < _STREAK:
            try:
                data = sock.recv(RECEIVE_SIZE)
            except BlockingIOError:
                pass
            except OSError:
                return b""
            else:
                self._reads += 1
                return data
        return await self.receive_later()

    async def receive_later(self) -> bytes:
        """`receive_some` for when the bytes are most likely not here yet (the answer to a
        request just sent; the next request after one was read whole): wait first, rather
        than pay for a `recv` that fails and its exception."""
        sock = self.sock
        self._reads = 0
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                return sock.recv(RECEIVE_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                return b""

    async def send_all(self, data: bytes) -> None:
        sock = self.sock
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        if sent == len(data):
            self._sends += 1
            if self._sends >= _STREAK:
                self._sends = 0
                await trio.lowlevel.cancel_shielded_checkpoint()
            return
        self._sends = 0
        with memoryview(data) as view:
            while sent < len(data):
                await trio.lowlevel.wait_writable(sock)
                try:
                    sent += sock.send(view[sent:])
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise trio.BrokenResourceError(str(exc)) from exc

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        with contextlib.suppress(OSError):
            self.sock.shutdown(_socket.SHUT_WR)

    def interrupt(self) -> None:
        if self.sock.fileno() != -1:
            trio.lowlevel.notify_closing(self.sock)

    def close(self) -> None:
        # Wake any task waiting on the socket (it gets ClosedResourceError) before the
        # descriptor number can be reused.
        if self.sock.fileno() != -1:
            trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


class TLSTransport:
    """A TLS connection over a trio socket."""

    __slots__ = ("stream",)

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream

    async def receive_some(self) -> bytes:
        try:
            return bytes(await self.stream.receive_some(RECEIVE_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def receive_later(self) -> bytes:
        return await self.receive_some()

    async def send_all(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except trio.ClosedResourceError as exc:
            raise trio.BrokenResourceError("connection closed") from exc

    async def send_eof(self) -> None:
        # TLS has no half-close that clients reliably honour; closing does the job.
        await trio.lowlevel.checkpoint()

    def fileno(self) -> int:
        return self.stream.transport_stream.socket.fileno()

    def interrupt(self) -> None:
        sock = self.stream.transport_stream.socket
        if sock.fileno() != -1:
            trio.lowlevel.notify_closing(sock)

    def close(self) -> None:
        self.stream.transport_stream.socket.close()
