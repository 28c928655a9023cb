"""Limits and timeouts: each answered or enforced as the server's docstring says."""

from __future__ import annotations

import trio
import trio.testing

from http11 import Request, Responder, ServerConfig

from .helpers import RawClient, echo, start_server

GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


async def test_head_over_max_head_bytes_gets_431(nursery: trio.Nursery) -> None:
    _, port = await start_server(nursery, echo, ServerConfig(max_head_bytes=1024))
    client = await RawClient.connect(port)
    await client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n")
    assert (await client.answer()).status == 431
    assert await client.closed()


async def test_head_growing_across_reads_gets_431(nursery: trio.Nursery) -> None:
    _, port = await start_server(nursery, echo, ServerConfig(max_head_bytes=4096))
    client = await RawClient.connect(port)
    await client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ")
    for _ in range(3):
        await trio.sleep(0.01)
        await client.send(b"a" * 3000)
    assert (await client.answer()).status == 431


async def test_too_many_headers_get_431(nursery: trio.Nursery) -> None:
    _, port = await start_server(nursery, echo, ServerConfig(max_headers=10))
    client = await RawClient.connect(port)
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(11))
    await client.send(b"GET / HTTP/1.1\r\n" + headers + b"\r\n")
    assert (await client.answer()).status == 431


async def test_declared_body_too_large_gets_413_without_100_continue(
    nursery: trio.Nursery,
) -> None:
    _, port = await start_server(nursery, echo, ServerConfig(max_body_bytes=100))
    client = await RawClient.connect(port)
    await client.send(
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 101\r\nExpect: 100-continue\r\n\r\n"
    )
    answer = await client.answer()
    assert answer.status == 413
    assert await client.closed()


async def test_chunked_body_too_large_gets_413(nursery: trio.Nursery) -> None:
    _, port = await start_server(nursery, echo, ServerConfig(max_body_bytes=100))
    client = await RawClient.connect(port)
    await client.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    await client.send(b"40\r\n" + b"a" * 64 + b"\r\n")
    await client.send(b"40\r\n" + b"a" * 64 + b"\r\n")
    assert (await client.answer()).status == 413


async def test_100_continue_is_sent_when_the_body_will_be_read(nursery: trio.Nursery) -> None:
    _, port = await start_server(nursery, echo)
    client = await RawClient.connect(port)
    await client.send(
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    interim = await client.answer()
    assert interim.status == 100
    await client.send(b"hi")
    answer = await client.answer()
    assert (answer.status, answer.body) == (200, b"POST|hi")


async def test_connections_over_the_limit_wait_for_a_free_slot(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    config = ServerConfig(max_connections=1, keep_alive_timeout=600)
    _, port = await start_server(nursery, echo, config)
    first = await RawClient.connect(port)
    await first.send(GET)
    assert (await first.answer()).status == 200
    second = await RawClient.connect(port)  # the kernel completes it; we do not accept it
    await second.send(GET)
    with trio.move_on_after(15) as waited:
        await second.answer()
    assert waited.cancelled_caught
    await first.aclose()
    assert (await second.answer()).status == 200


async def test_slowloris_head_gets_408(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    _, port = await start_server(nursery, echo, ServerConfig(read_timeout=10))
    client = await RawClient.connect(port)
    start = trio.current_time()
    for piece in (b"GET / HT", b"TP/1.1\r\n", b"Host: t\r\n", b"X-A: b\r\n"):
        await client.send(piece)
        await trio.sleep(3)
    assert (await client.answer()).status == 408
    assert trio.current_time() - start < 15
    assert await client.closed()


async def test_slow_body_gets_408(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    _, port = await start_server(nursery, echo, ServerConfig(read_timeout=10))
    client = await RawClient.connect(port)
    await client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
    assert (await client.answer()).status == 408


async def test_idle_keep_alive_connection_is_closed(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    _, port = await start_server(nursery, echo, ServerConfig(keep_alive_timeout=5))
    client = await RawClient.connect(port)
    await client.send(GET)
    await client.answer()
    start = trio.current_time()
    assert await client.closed()
    assert 5 <= trio.current_time() - start <= 6.5  # checked once a second


async def test_client_that_stops_reading_blocks_writes_then_times_out(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    written = 0
    cancelled = trio.Event()
    piece = b"x" * 256 * 1024

    async def firehose(request: Request, responder: Responder) -> None:
        nonlocal written
        await responder.start(200, [])
        try:
            for _ in range(10_000):
                await responder.write(piece)
                written += len(piece)
        except trio.Cancelled:
            cancelled.set()
            raise

    _, port = await start_server(nursery, firehose, ServerConfig(write_timeout=30))
    client = await RawClient.connect(port)
    await client.send(GET)
    with trio.fail_after(120):
        await cancelled.wait()
    # Backpressure: the handler waited on the socket instead of buffering everything.
    assert written < 64 * 1024 * 1024
    assert trio.current_time() >= 30
