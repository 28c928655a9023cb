"""Ambiguous framing is refused with 400, and nothing behind it is ever read."""

from __future__ import annotations

import pytest
import trio

from http11 import Request, Responder

from .helpers import RawClient, start_server

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"

CASES = {
    "content-length and transfer-encoding": (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "two different content-lengths": (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 0\r\n\r\n"
    ),
    "invalid chunk size": (
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n"
    ),
    "obs-fold": b"GET / HTTP/1.1\r\nHost: t\r\nX-A: b\r\n c\r\n\r\n",
    "obs-fold with a tab": b"GET / HTTP/1.1\r\nHost: t\r\nX-A: b\r\n\tc\r\n\r\n",
    "final coding not chunked": (
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
    ),
    "only coding gzip": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
    "coding besides chunked": (
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    ),
    "HTTP/0.9": b"GET /\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", CASES.values(), ids=list(CASES))
async def test_ambiguous_request_gets_400_and_the_rest_is_never_read(
    nursery: trio.Nursery, request_bytes: bytes
) -> None:
    seen: list[bytes] = []

    async def record(request: Request, responder: Responder) -> None:
        seen.append(request.target)
        await responder.respond(200, [], b"ok")

    _, port = await start_server(nursery, record)
    client = await RawClient.connect(port)
    await client.send(request_bytes + SMUGGLED)
    answer = await client.answer()
    assert answer.status == 400
    assert answer.header(b"connection") == b"close"
    assert await client.closed()
    assert seen == []
