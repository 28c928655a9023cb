"""The byte pipe under a connection: a plain trio socket, or a trio SSLStream.

Both sides of the engine speak to a `Transport`, so the HTTP code does not care whether TLS
is in the way. Plain sockets skip trio's `SocketStream` layer: the HTTP code already
serialises sends, so its conflict detection is pure overhead here. `close()` is synchronous,
which lets cleanup run safely under cancellation.

A reset connection reads as end of file (b""): for both server and client a reset is "the
peer went away". Sending to a peer that went away raises `trio.BrokenResourceError`.
"""

from __future__ import annotations

import contextlib
import socket as _socket
from typing import Protocol

import trio

RECEIVE_SIZE = 65536


class Transport(Protocol):
    """What the HTTP code needs from a connection."""

    async def receive_some(self) -> bytes: ...

    async def send_all(self, data: bytes) -> None: ...

    async def send_eof(self) -> None: ...

    def close(self) -> None: ...


class SocketTransport:
    """A plain TCP connection."""

    __slots__ = ("sock",)

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock

    async def receive_some(self) -> bytes:
        try:
            return await self.sock.recv(RECEIVE_SIZE)
        except OSError:
            return b""

    async def send_all(self, data: bytes) -> None:
        sock = self.sock
        try:
            sent = await sock.send(data)
            if sent < len(data):
                with memoryview(data) as view:
                    while sent < len(data):
                        sent += await sock.send(view[sent:])
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        with contextlib.suppress(OSError):
            self.sock.shutdown(_socket.SHUT_WR)

    def close(self) -> None:
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

    async def send_all(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except trio.ClosedResourceError as exc:
            raise trio.BrokenResourceError("connection closed") from exc

    async def send_eof(self) -> None:
        # TLS has no half-close that clients reliably honour; closing does the job.
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        self.stream.transport_stream.socket.close()
