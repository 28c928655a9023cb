"""A burst of clients connecting at once is drained from the backlog and answered."""

from __future__ import annotations

import trio

from .helpers import RawClient, echo, start_server


async def test_a_thousand_clients_at_once_all_get_answers(nursery: trio.Nursery) -> None:
    _, port = await start_server(nursery, echo)
    answered = 0

    async def one() -> None:
        nonlocal answered
        client = await RawClient.connect(port)
        await client.send(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        if (await client.answer()).status == 200:
            answered += 1
        await client.aclose()

    with trio.fail_after(30):
        async with trio.open_nursery() as clients:
            for _ in range(1000):
                clients.start_soon(one)
    assert answered == 1000
