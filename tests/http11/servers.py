"""Tiny loopback servers for the client tests: raw trio sockets, misbehaving on purpose."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import trio

StreamHandler = Callable[[trio.SocketStream], Awaitable[None]]


async def raw_server(nursery: trio.Nursery, handler: StreamHandler) -> int:
    """Serve `handler` for each connection on 127.0.0.1; returns the port."""
    listeners: list[trio.SocketListener] = await nursery.start(
        partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
    )
    return int(listeners[0].socket.getsockname()[1])


async def read_head(stream: trio.SocketStream, buffered: bytearray) -> bytes:
    """Read up to and including the blank line that ends a request head."""
    while b"\r\n\r\n" not in buffered:
        data = await stream.receive_some(65536)
        if not data:
            raise EOFError
        buffered += data
    end = buffered.index(b"\r\n\r\n") + 4
    head = bytes(buffered[:end])
    del buffered[:end]
    return head


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class ConnectProxy:
    """A CONNECT-only proxy on loopback that records the tunnels it opened."""

    def __init__(self) -> None:
        self.tunnels: list[bytes] = []

    async def __call__(self, client: trio.SocketStream) -> None:
        buffered = bytearray()
        head = await read_head(client, buffered)
        method, authority, _ = head.split(b" ", 2)
        assert method == b"CONNECT"
        self.tunnels.append(authority)
        host, port = authority.rsplit(b":", 1)
        upstream = await trio.open_tcp_stream(host.decode(), int(port))
        await client.send_all(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(source: trio.SocketStream, sink: trio.SocketStream) -> None:
            try:
                while data := await source.receive_some(65536):
                    await sink.send_all(data)
            except trio.BrokenResourceError:
                pass
            await sink.aclose()

        async with trio.open_nursery() as pipes:
            pipes.start_soon(pipe, client, upstream)
            pipes.start_soon(pipe, upstream, client)
