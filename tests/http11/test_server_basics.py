"""The server speaks correct HTTP/1.1: keep-alive, pipelining, 1.0, bodies, streaming."""

from __future__ import annotations

import logging

import pytest
import trio

from http11 import Request, Responder

from .helpers import RawClient, echo, read_all, start_server

GET = b"GET /%b HTTP/1.1\r\nHost: t\r\n\r\n"


async def test_keep_alive_serves_several_requests_on_one_connection(
    nursery: trio.Nursery,
) -> None:
    _, port = await start_server(nursery, echo)
    client = await RawClient.connect(port)
    for name in (b"a", b"b", b"c"):
        await client.send(GET % name)
        answer = await client.answer()
        assert answer.status == 200
        assert answer.header(b"x-target") == b"/" + name
        assert answer.header(b"content-length") == b"4"


async def test_pipelined_requests_are_answered_in_order(nursery: trio.Nursery) -> None:
    async def slow_first(request: Request, responder: Responder) -> None:
        if request.target == b"/1":
            await trio.sleep(0.05)
        await echo(request, responder)

    _, port = await start_server(nursery, slow_first)
    client = await RawClient.connect(port)
    await client.send(b"".join(GET % str(i).encode() for i in range(1, 6)))
    targets = [(await client.answer()).header(b"x-target") for _ in range(5)]
    assert targets == [b"/1", b"/2", b"/3", b"/4", b"/5"]


async def test_http10_closes_by_default(nursery: trio.Nursery) -> None:
    _, port = await start_server(nursery, echo)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /old HTTP/1.0\r\n\r\n")
    data = await read_all(stream)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close\r\n" in data
    assert data.endswith(b"\r\n\r\nGET|")


async def test_http10_keeps_alive_when_asked(nursery: trio.Nursery) -> None:
    _, port = await start_server(nursery, echo)
    client = await RawClient.connect(port)
    for _ in range(2):
        await client.send(b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        answer = await client.answer()
        assert answer.header(b"connection") == b"keep-alive"


async def test_connection_close_closes_after_the_answer(nursery: trio.Nursery) -> None:
    _, port = await start_server(nursery, echo)
    client = await RawClient.connect(port)
    await client.send(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" + GET % b"y")
    answer = await client.answer()
    assert answer.header(b"connection") == b"close"
    assert await client.closed()


async def test_content_length_and_chunked_bodies_are_read(nursery: trio.Nursery) -> None:
    _, port = await start_server(nursery, echo)
    client = await RawClient.connect(port)
    await client.send(b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
    assert (await client.answer()).body == b"POST|hello"
    await client.send(
        b"POST /b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    assert (await client.answer()).body == b"POST|abcde"


async def test_head_gets_headers_but_no_body(nursery: trio.Nursery) -> None:
    _, port = await start_server(nursery, echo)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"HEAD /h HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    data = await read_all(stream)
    assert b"content-length: 5\r\n" in data  # the length of b"HEAD|", which is not sent
    assert data.endswith(b"\r\n\r\n")


async def test_streamed_answer_is_chunked_with_a_terminator(nursery: trio.Nursery) -> None:
    async def stream(request: Request, responder: Responder) -> None:
        await responder.start(200, [(b"content-type", b"text/event-stream")])
        for piece in (b"one", b"two"):
            await responder.write(piece)
            await trio.lowlevel.checkpoint()
        await responder.end()

    _, port = await start_server(nursery, stream)
    client = await RawClient.connect(port)
    await client.send(GET % b"s")
    answer = await client.answer()
    assert answer.header(b"transfer-encoding") == b"chunked"
    assert answer.body == b"onetwo"
    sock = await trio.open_tcp_stream("127.0.0.1", port)
    await sock.send_all(b"GET /s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert (await read_all(sock)).endswith(b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n")


async def test_http10_stream_ends_with_the_connection(nursery: trio.Nursery) -> None:
    async def stream(request: Request, responder: Responder) -> None:
        await responder.start(200, [])
        await responder.write(b"abc")
        await responder.end()

    _, port = await start_server(nursery, stream)
    sock = await trio.open_tcp_stream("127.0.0.1", port)
    await sock.send_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    data = await read_all(sock)
    assert b"transfer-encoding" not in data
    assert b"connection: close\r\n" in data
    assert data.endswith(b"\r\n\r\nabc")


async def test_writes_ready_together_leave_in_one_batch(nursery: trio.Nursery) -> None:
    release = trio.Event()

    async def burst(request: Request, responder: Responder) -> None:
        await responder.start(200, [])
        for piece in (b"first", b"second", b"third"):
            await responder.write(piece)
        await release.wait()
        await responder.end()

    _, port = await start_server(nursery, burst)
    sock = await trio.open_tcp_stream("127.0.0.1", port)
    await sock.send_all(GET % b"")
    data = b""
    with trio.fail_after(20):
        while b"third" not in data:
            data += await sock.receive_some(65536)
    # The head and all three pieces were sent by one send_all, before the handler resumed.
    assert data.endswith(b"5\r\nfirst\r\n6\r\nsecond\r\n5\r\nthird\r\n")
    release.set()


async def test_a_lone_write_is_not_delayed(nursery: trio.Nursery) -> None:
    async def lone(request: Request, responder: Responder) -> None:
        await responder.start(200, [])
        await responder.write(b"only")
        await trio.sleep_forever()

    _, port = await start_server(nursery, lone)
    sock = await trio.open_tcp_stream("127.0.0.1", port)
    await sock.send_all(GET % b"")
    data = b""
    with trio.fail_after(20):
        while b"only" not in data:
            data += await sock.receive_some(65536)


async def test_handler_error_before_answer_is_500_and_logged_without_secrets(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(request: Request, responder: Responder) -> None:
        raise ValueError("boom")

    _, port = await start_server(nursery, broken)
    client = await RawClient.connect(port)
    with caplog.at_level(logging.ERROR, logger="http11"):
        await client.send(b"GET /p HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer sk-secret\r\n\r\n")
        answer = await client.answer()
    assert answer.status == 500
    assert "handler failed: GET /p" in caplog.text
    assert "sk-secret" not in caplog.text
    await client.send(GET % b"again")
    assert (await client.answer()).status == 500


async def test_handler_error_mid_stream_closes_the_connection(nursery: trio.Nursery) -> None:
    async def broken(request: Request, responder: Responder) -> None:
        await responder.start(200, [])
        await responder.write(b"part")
        await trio.lowlevel.checkpoint()
        raise ValueError("boom")

    _, port = await start_server(nursery, broken)
    sock = await trio.open_tcp_stream("127.0.0.1", port)
    await sock.send_all(GET % b"")
    data = await read_all(sock)
    assert b"4\r\npart\r\n" in data
    assert not data.endswith(b"0\r\n\r\n")


async def test_malformed_request_gets_400_and_others_are_still_served(
    nursery: trio.Nursery,
) -> None:
    _, port = await start_server(nursery, echo)
    bad = await RawClient.connect(port)
    await bad.send(b"G@T / HTTP/1.1\r\n\r\n")
    answer = await bad.answer()
    assert answer.status == 400
    assert answer.body == b"Bad Request\n"
    assert await bad.closed()
    good = await RawClient.connect(port)
    await good.send(GET % b"ok")
    assert (await good.answer()).status == 200


async def test_an_aborted_stream_is_cut_without_its_last_chunk(nursery: trio.Nursery) -> None:
    async def broken(request: Request, responder: Responder) -> None:
        await responder.start(200, [(b"content-type", b"text/event-stream")])
        await responder.write(b"data: 1\n\n")
        await responder.abort()

    _, port = await start_server(nursery, broken)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\n")
    received = b""
    with trio.fail_after(5):
        while data := await stream.receive_some():
            received += data

    assert received.startswith(b"HTTP/1.1 200 ")
    assert received.endswith(b"9\r\ndata: 1\n\n\r\n")  # the piece, and no `0\r\n\r\n` after it
    assert received.count(b"HTTP/1.1") == 1  # the connection served nothing more
