"""The load generator's HTTP/1.1 client: framing, first-byte times, kept-alive connections."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import msgspec
import pytest
import trio

from benchmarks._bench._client import (
    COUNTER_DIGITS,
    Connection,
    ConnectionPool,
    ProtocolError,
    chat_body_parts,
    chat_requests,
)
from benchmarks.fake_upstream import FakeUpstream


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").partition(":")
    return host, int(port)


def test_requests_differ_only_in_their_counter_and_have_one_length() -> None:
    make = chat_requests(
        "127.0.0.1", 8000, model="m", stream=True, headers={"authorization": "Bearer k"}, first=7
    )

    first, second = make(0), make(1)

    assert len(first) == len(second)
    head, _, body = first.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nauthorization: Bearer k" in head
    assert f"content-length: {len(body)}".encode() in head
    decoded = msgspec.json.decode(body)
    assert decoded["stream"] is True
    assert decoded["messages"][0]["content"] == "benchmark request " + "7".zfill(COUNTER_DIGITS)
    assert msgspec.json.decode(second.partition(b"\r\n\r\n")[2])["messages"][0]["content"].endswith(
        "8"
    )
    before, after = chat_body_parts("m", stream=True)
    assert body == before + b"7".zfill(COUNTER_DIGITS) + after


async def test_whole_answers_and_streams_from_the_fake_upstream(
    fake_upstream: FakeUpstream,
) -> None:
    host, port = _host_port(fake_upstream.url)
    connection = await Connection.open(host, port)
    try:
        whole = await connection.exchange(
            chat_requests(host, port, model="fake-gpt", stream=False)(0)
        )
        stream = await connection.exchange(
            chat_requests(host, port, model="fake-gpt", stream=True)(1)
        )
        again = await connection.exchange(
            chat_requests(host, port, model="fake-gpt", stream=False)(2)
        )
    finally:
        await connection.aclose()

    assert whole.status == stream.status == again.status == 200
    assert whole.first_byte is not None
    assert stream.first_byte is not None
    assert stream.size > whole.size
    assert [r.body["stream"] for r in fake_upstream.requests] == [False, True, False]


async def test_an_error_status_is_read_in_full(fake_upstream: FakeUpstream) -> None:
    host, port = _host_port(fake_upstream.url)
    make = chat_requests(
        host, port, model="fake-gpt", stream=False, headers={"x-fake-status": "503"}
    )
    connection = await Connection.open(host, port)
    try:
        answers = [await connection.exchange(make(i)) for i in range(2)]
    finally:
        await connection.aclose()

    assert [answer.status for answer in answers] == [503, 503]


@asynccontextmanager
async def canned(answer: bytes, piece: int | None = None) -> AsyncIterator[tuple[str, int]]:
    """A server that answers every request it reads with the same bytes.

    With `piece`, it writes them `piece` bytes at a time, pausing in between, so the
    client reads the answer in many parts.
    """
    size = piece or len(answer)

    async def handler(stream: trio.SocketStream) -> None:
        while await stream.receive_some(65536):
            for start in range(0, len(answer), size):
                await stream.send_all(answer[start : start + size])
                if piece:
                    await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        yield "127.0.0.1", listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


CHUNKED = (
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/event-stream\r\n\r\n"
    b"5;ext=1\r\nhello\r\n"
    b"10\r\n0123456789abcdef\r\n"
    b"0\r\nx-trailer: yes\r\n\r\n"
)


@pytest.mark.parametrize("piece", [None, 1, 7])
async def test_chunked_bodies_with_extensions_and_trailers(piece: int | None) -> None:
    async with canned(CHUNKED, piece) as (host, port):
        connection = await Connection.open(host, port)
        try:
            answers = [await connection.exchange(b"GET / HTTP/1.1\r\n\r\n") for _ in range(3)]
        finally:
            await connection.aclose()

    assert [(a.status, a.size) for a in answers] == [(200, 21)] * 3
    assert all(a.first_byte is not None for a in answers)


async def test_connection_close_closes_the_connection() -> None:
    answer = b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno"
    async with canned(answer) as (host, port):
        connection = await Connection.open(host, port)
        result = await connection.exchange(b"GET / HTTP/1.1\r\n\r\n")

    assert (result.status, result.size, connection.closed) == (404, 2, True)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nno framing",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"garbage\r\n\r\n",
    ],
)
async def test_a_malformed_answer_is_a_protocol_error(answer: bytes) -> None:
    async with canned(answer) as (host, port):
        connection = await Connection.open(host, port)
        with pytest.raises(ProtocolError):
            await connection.exchange(b"GET / HTTP/1.1\r\n\r\n")

    assert connection.closed


async def test_a_server_that_hangs_up_midway_is_a_protocol_error() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        connection = await Connection.open("127.0.0.1", port)
        with pytest.raises(ProtocolError, match="closed the connection"):
            await connection.exchange(b"GET / HTTP/1.1\r\n\r\n")
        nursery.cancel_scope.cancel()


async def test_a_pool_reuses_connections_and_opens_no_more_than_its_size() -> None:
    opened = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal opened
        opened += 1
        while await stream.receive_some(65536):
            await trio.sleep(0.01)
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        pool = ConnectionPool("127.0.0.1", listeners[0].socket.getsockname()[1], 3)
        statuses: list[int] = []

        async def one() -> None:
            statuses.append((await pool.exchange(b"GET / HTTP/1.1\r\n\r\n")).status)

        async with trio.open_nursery() as clients:
            for _ in range(12):
                clients.start_soon(one)
        await pool.aclose()
        nursery.cancel_scope.cancel()

    assert statuses == [200] * 12
    assert opened == 3
