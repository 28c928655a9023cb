"""A client that hangs up cancels its handler at once; pipelined bytes are no hang-up."""

from __future__ import annotations

import trio

from http11 import Request, Responder

from .helpers import RawClient, start_server

GET = b"GET /%b HTTP/1.1\r\nHost: t\r\n\r\n"


class Recorder:
    """A handler that waits forever (after `before` is done) and records its cancellation."""

    def __init__(self, stream_first: bool) -> None:
        self.stream_first = stream_first
        self.running = trio.Event()
        self.cancelled = trio.Event()

    async def __call__(self, request: Request, responder: Responder) -> None:
        if self.stream_first:
            await responder.start(200, [])
            await responder.write(b"first")
        self.running.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.cancelled.set()
            raise


async def test_hang_up_before_the_answer_cancels_the_handler(nursery: trio.Nursery) -> None:
    handler = Recorder(stream_first=False)
    _, port = await start_server(nursery, handler)
    client = await RawClient.connect(port)
    await client.send(GET % b"")
    with trio.fail_after(20):
        await handler.running.wait()
        await client.aclose()
        await handler.cancelled.wait()


async def test_hang_up_mid_stream_cancels_the_handler(nursery: trio.Nursery) -> None:
    handler = Recorder(stream_first=True)
    _, port = await start_server(nursery, handler)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(GET % b"")
    with trio.fail_after(20):
        data = b""
        while b"first" not in data:
            data += await stream.receive_some(65536)
        await stream.aclose()
        await handler.cancelled.wait()


async def test_pipelined_bytes_while_a_handler_runs_are_not_a_hang_up(
    nursery: trio.Nursery,
) -> None:
    release = trio.Event()
    started = trio.Event()

    async def first_waits(request: Request, responder: Responder) -> None:
        if request.target == b"/1":
            started.set()
            await release.wait()
        await responder.respond(200, [], request.target)

    _, port = await start_server(nursery, first_waits)
    client = await RawClient.connect(port)
    await client.send(GET % b"1")
    await started.wait()
    await client.send(GET % b"2")
    await trio.sleep(0.05)  # let the server read the second request while /1 runs
    release.set()
    assert (await client.answer()).body == b"/1"
    assert (await client.answer()).body == b"/2"
