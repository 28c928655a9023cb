"""Graceful shutdown: stop accepting, close idle connections, bound running handlers."""

from __future__ import annotations

import trio
import trio.testing

from http11 import Request, Responder, Server, ServerConfig, serve

from .helpers import RawClient, echo, read_all

GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


async def start(nursery: trio.Nursery, server: Server) -> tuple[int, trio.Event]:
    """Run `server.serve` in `nursery`; the event is set when it returned."""
    done = trio.Event()

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        await server.serve(task_status=task_status)
        done.set()

    urls: list[str] = await nursery.start(run)
    return int(urls[0].rsplit(":", 1)[1]), done


async def test_shutdown_closes_idle_connections_and_lets_handlers_finish(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    started = trio.Event()

    async def slow(request: Request, responder: Responder) -> None:
        if request.target == b"/slow":
            started.set()
            await trio.sleep(5)
        await responder.respond(200, [], b"done")

    server = Server(slow, ServerConfig(grace_period=10, keep_alive_timeout=600))
    port, done = await start(nursery, server)
    idle = await RawClient.connect(port)
    await idle.send(GET)
    await idle.answer()
    busy = await RawClient.connect(port)
    await busy.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
    await started.wait()
    server.shutdown()
    assert await idle.closed()
    answer = await busy.answer()
    assert (answer.status, answer.body) == (200, b"done")
    assert answer.header(b"connection") == b"close"
    with trio.fail_after(30):
        await done.wait()
    assert server.connection_count == 0


async def test_handlers_past_the_grace_period_are_cancelled_and_may_write_a_last_piece(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    started = trio.Event()
    flags: list[bool] = []

    async def endless(request: Request, responder: Responder) -> None:
        await responder.start(200, [])
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            flags.append(responder.shutting_down)
            with trio.CancelScope(shield=True):
                await responder.write(b"event: error\n\n")
                await responder.end()

    server = Server(endless, ServerConfig(grace_period=10))
    port, done = await start(nursery, server)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(GET)
    await started.wait()
    began = trio.current_time()
    server.shutdown()
    data = await read_all(stream)
    assert data.endswith(b"e\r\nevent: error\n\n\r\n0\r\n\r\n")
    assert flags == [True]
    with trio.fail_after(30):
        await done.wait()
    assert 10 <= trio.current_time() - began < 12


async def test_serve_stops_accepting_on_its_trigger(nursery: trio.Nursery) -> None:
    trigger = trio.Event()
    done = trio.Event()

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        await serve(echo, shutdown_trigger=trigger.wait, task_status=task_status)
        done.set()

    urls: list[str] = await nursery.start(run)
    port = int(urls[0].rsplit(":", 1)[1])
    client = await RawClient.connect(port)
    await client.send(GET)
    assert (await client.answer()).status == 200
    trigger.set()
    with trio.fail_after(20):
        await done.wait()
    try:
        await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        pass
    else:
        raise AssertionError("the server still accepts connections")
