"""Clients that send their request slowly, or never finish it, do not hold a connection.

These use real time on a real socket (short limits, so they stay fast); each waits under
`WAIT` so a regression fails instead of hanging.
"""

from __future__ import annotations

import httpx
import trio

from pipeline import Pipeline
from providers import MockProvider

from .conftest import WAIT, Start, chat_body

LIMIT = 0.3


async def connect(url: str) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", int(url.rsplit(":", 1)[1]))


async def read_all(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    with trio.fail_after(WAIT):
        while data := await stream.receive_some():
            received += data
    return received


async def test_a_body_that_never_arrives_whole_is_cut_off_with_a_408(start_server: Start) -> None:
    url = await start_server(Pipeline(MockProvider()), read_timeout=LIMIT)
    stream = await connect(url)
    await stream.send_all(
        b'POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"mo'
    )

    answer = await read_all(stream)

    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"code":"request_timeout"' in answer
    assert b"x-request-id: req_" in answer


async def test_a_body_trickling_in_is_cut_off_at_the_limit_however_it_moves(
    start_server: Start,
) -> None:
    # A byte now and then would defeat a limit per read: the limit is for the whole body.
    url = await start_server(Pipeline(MockProvider()), read_timeout=LIMIT)
    stream = await connect(url)
    await stream.send_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n"
    )

    async def trickle() -> None:
        for byte in b'{"model": "m"':
            await trio.sleep(LIMIT / 4)
            await stream.send_all(bytes([byte]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        answer = await read_all(stream)
        nursery.cancel_scope.cancel()

    assert answer.startswith(b"HTTP/1.1 408 ")


async def test_unfinished_headers_are_cut_off_by_the_read_timeout(start_server: Start) -> None:
    # Slowloris: a head that never ends holds a connection only for `read_timeout`.
    url = await start_server(Pipeline(MockProvider()), read_timeout=LIMIT, keep_alive_timeout=60)
    stream = await connect(url)
    await stream.send_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")

    answer = await read_all(stream)

    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"code":"request_timeout"' in answer


async def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(
    start_server: Start,
) -> None:
    url = await start_server(Pipeline(MockProvider()), keep_alive_timeout=LIMIT)
    stream = await connect(url)

    assert await read_all(stream) == b""


async def test_a_stream_may_last_longer_than_the_read_timeout(
    start_server: Start, http: httpx.AsyncClient
) -> None:
    # The client sends nothing while it reads a long answer: that is not a slow request.
    provider = MockProvider(chunks=2, ttft=2 * LIMIT)
    url = await start_server(Pipeline(provider), read_timeout=LIMIT, keep_alive_timeout=LIMIT)

    response = await http.post(f"{url}/v1/chat/completions", json=chat_body(stream=True))

    assert response.status_code == 200
    assert response.text.endswith("data: [DONE]\n\n")
