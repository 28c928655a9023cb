"""Cancelling a request at any point frees its pool slot and never leaks a connection."""

from __future__ import annotations

import trio
import trio.testing

from http11 import Client, PoolStatistics, Request, Responder

from .helpers import start_server
from .servers import OK, raw_server, read_head

IDLE = PoolStatistics(connections=0, idle=0, in_use=0, waiting=0)


async def never_answer(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()


async def test_cancel_while_waiting_for_a_pool_slot(nursery: trio.Nursery) -> None:
    async def hold(stream: trio.SocketStream) -> None:
        await read_head(stream, bytearray())
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        await trio.sleep_forever()

    port = await raw_server(nursery, hold)
    client = Client(pool_size=1, trust_env=False)
    first = await client.request("GET", f"http://127.0.0.1:{port}/")
    with trio.move_on_after(0.05):
        await client.request("GET", f"http://127.0.0.1:{port}/")
    assert client.statistics() == PoolStatistics(connections=1, idle=0, in_use=1, waiting=0)
    await first.aclose()
    assert client.statistics() == IDLE


async def test_cancel_while_connecting(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    port = await raw_server(nursery, never_answer)  # TCP accepted, TLS never answered
    client = Client(trust_env=False, connect_timeout=600)
    with trio.move_on_after(5) as scope:
        await client.request("GET", f"https://127.0.0.1:{port}/")
    assert scope.cancelled_caught
    assert client.statistics() == IDLE


async def test_cancel_while_sending(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    port = await raw_server(nursery, never_answer)  # never reads: the send blocks
    client = Client(trust_env=False)
    with trio.move_on_after(5) as scope:
        await client.request("POST", f"http://127.0.0.1:{port}/", body=b"x" * 50_000_000)
    assert scope.cancelled_caught
    assert client.statistics() == IDLE


async def test_cancel_while_awaiting_the_head_closes_the_connection(
    nursery: trio.Nursery,
) -> None:
    closed = trio.Event()

    async def read_then_wait(stream: trio.SocketStream) -> None:
        await read_head(stream, bytearray())
        if not await stream.receive_some(10):
            closed.set()

    port = await raw_server(nursery, read_then_wait)
    client = Client(trust_env=False)
    with trio.move_on_after(0.1):
        await client.request("GET", f"http://127.0.0.1:{port}/")
    assert client.statistics() == IDLE
    with trio.fail_after(20):
        await closed.wait()


async def test_cancel_mid_body_then_aclose(nursery: trio.Nursery) -> None:
    async def half(stream: trio.SocketStream) -> None:
        await read_head(stream, bytearray())
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await trio.sleep_forever()

    port = await raw_server(nursery, half)
    client = Client(trust_env=False)
    response = await client.request("GET", f"http://127.0.0.1:{port}/")
    assert await response.receive_some() == b"abc"
    with trio.move_on_after(0.05):
        await response.receive_some()
    assert client.statistics() == IDLE  # the failed read gave the slot back already
    await response.aclose()
    assert client.statistics() == IDLE


async def test_cancelled_aclose_still_frees_the_slot(nursery: trio.Nursery) -> None:
    async def handler(request: Request, responder: Responder) -> None:
        await responder.respond(200, [], b"body")

    _, port = await start_server(nursery, handler)
    client = Client(trust_env=False)
    response = await client.request("GET", f"http://127.0.0.1:{port}/")
    with trio.CancelScope() as scope:
        scope.cancel()
        await response.aclose()
    assert client.statistics() == IDLE


async def test_a_thousand_cancelled_waits_leave_the_pool_clean(nursery: trio.Nursery) -> None:
    async def hold(stream: trio.SocketStream) -> None:
        await read_head(stream, bytearray())
        await stream.send_all(OK)
        await trio.sleep_forever()

    port = await raw_server(nursery, hold)
    client = Client(pool_size=1, trust_env=False)
    url = f"http://127.0.0.1:{port}/"
    holder = await client.request("GET", url)

    async def wait_for_a_slot(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await client.request("GET", url)

    for _ in range(1000):
        async with trio.open_nursery() as waiters:
            scope: trio.CancelScope = await waiters.start(wait_for_a_slot)
            await trio.testing.wait_all_tasks_blocked()
            assert client.statistics().waiting == 1
            scope.cancel()
    assert client.statistics() == PoolStatistics(connections=1, idle=0, in_use=1, waiting=0)
    assert await holder.read() == b"ok"
    assert client.statistics() == PoolStatistics(connections=1, idle=1, in_use=0, waiting=0)
    await client.aclose()
    assert client.statistics() == IDLE
