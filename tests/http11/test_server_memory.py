"""Memory after a churn of connections: a closed connection is freed by reference counting.

Nothing the server keeps for a connection may sit in a reference cycle once it closed:
such garbage waits for a full collection, and 150,000 rejected connections grew a server
by 150 MB before one ran (issue 11). The churn below runs with the cyclic collector off,
so every object left in a cycle stays counted.
"""

from __future__ import annotations

import gc

import trio

from http11 import ServerConfig

from .helpers import echo, start_server

REQUESTS = {
    "malformed": b"NOT HTTP AT ALL\r\n\r\n",
    "body too large": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 999999\r\n\r\n",
    "too many headers": b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 20 + b"\r\n",
    "bad transfer-encoding": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
    "accepted": b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
}
CONNECTIONS = 2_000


async def exchange(port: int, data: bytes) -> bytes:
    """Send `data` on a fresh connection and read the answer until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        received = b""
        while chunk := await stream.receive_some(65536):
            received += chunk
    return received


async def test_rejected_and_closed_connections_leave_nothing_for_the_cycle_collector(
    nursery: trio.Nursery,
) -> None:
    _, port = await start_server(nursery, echo, ServerConfig(max_body_bytes=1024, max_headers=10))
    kinds = list(REQUESTS.values())
    statuses = set()
    for data in kinds * 20:  # warm up: first-use caches, interned strings, the pool
        statuses.add((await exchange(port, data)).split(b" ", 2)[1])
    assert statuses == {b"200", b"400", b"413", b"431"}
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        for i in range(CONNECTIONS):
            await exchange(port, kinds[i % len(kinds)])
        growth = len(gc.get_objects()) - before
    finally:
        gc.enable()
    # A connection left in a cycle is about 50 tracked objects: 100,000 for the churn.
    assert growth < CONNECTIONS // 4, f"{growth} objects left after {CONNECTIONS} connections"
