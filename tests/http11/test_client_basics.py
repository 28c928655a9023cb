"""The client: framing, the LIFO pool, stale-connection retry, timeouts and errors."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from http11 import (
    Client,
    ConnectError,
    ConnectTimeout,
    PoolStatistics,
    PoolTimeout,
    ReadTimeout,
    RemoteProtocolError,
    Request,
    Responder,
    ResponseTooLarge,
)

from .helpers import start_server
from .servers import OK, raw_server, read_head


async def echo(request: Request, responder: Responder) -> None:
    client = request.client
    assert client is not None
    await responder.respond(
        200,
        [
            (b"x-client-port", b"%d" % client[1]),
            (b"x-length", request.header(b"content-length") or b"-"),
        ],
        request.body,
    )


async def test_body_is_sent_with_content_length(nursery: trio.Nursery) -> None:
    _, port = await start_server(nursery, echo)
    async with (
        Client(trust_env=False) as client,
        await client.request(
            "POST", f"http://127.0.0.1:{port}/", [(b"content-type", b"text/plain")], b"hello"
        ) as response,
    ):
        assert response.status == 200
        assert response.reason == b"OK"
        assert response.header(b"x-length") == b"5"
        assert await response.read() == b"hello"


async def test_chunked_and_close_delimited_bodies_are_read(nursery: trio.Nursery) -> None:
    async def framings(stream: trio.SocketStream) -> None:
        buffered = bytearray()
        await read_head(stream, buffered)
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        await read_head(stream, buffered)
        await stream.send_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
        await stream.aclose()

    port = await raw_server(nursery, framings)
    client = Client(trust_env=False)
    url = f"http://127.0.0.1:{port}/"
    assert await (await client.request("GET", url)).read() == b"abcde"
    assert client.statistics().idle == 1
    response = await client.request("GET", url)
    pieces = [piece async for piece in response]
    assert b"".join(pieces) == b"until the end"
    assert client.statistics() == PoolStatistics(0, 0, 0, 0)


async def test_head_204_and_304_have_no_body_and_keep_the_connection(
    nursery: trio.Nursery,
) -> None:
    async def no_bodies(request: Request, responder: Responder) -> None:
        status = int(request.path.strip("/") or 200)
        await responder.respond(status, [(b"content-length", b"7")] if status != 200 else [], b"")

    async def head_says_length(request: Request, responder: Responder) -> None:
        await responder.respond(200, [], b"1234567")

    _, port = await start_server(nursery, head_says_length)
    client = Client(trust_env=False)
    url = f"http://127.0.0.1:{port}/"
    response = await client.request("HEAD", url)
    assert response.header(b"content-length") == b"7"
    assert await response.read() == b""
    assert await (await client.request("GET", url)).read() == b"1234567"
    _, port2 = await start_server(nursery, no_bodies)
    for status in (204, 304):
        response = await client.request("GET", f"http://127.0.0.1:{port2}/{status}")
        assert response.status == status
        assert await response.read() == b""
    assert client.statistics() == PoolStatistics(2, 2, 0, 0)


async def test_the_most_recently_used_connection_is_reused(nursery: trio.Nursery) -> None:
    both = trio.Event()
    arrived = 0

    async def gather(request: Request, responder: Responder) -> None:
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            both.set()
        await both.wait()
        await echo(request, responder)

    _, port = await start_server(nursery, gather)
    client = Client(trust_env=False)
    url = f"http://127.0.0.1:{port}/"
    responses = []

    async def one() -> None:
        responses.append(await client.request("GET", url))

    async with trio.open_nursery() as pair:
        pair.start_soon(one)
        pair.start_soon(one)
    first, second = responses
    await first.read()
    await second.read()  # released last, so used next
    again = await client.request("GET", url)
    assert again.header(b"x-client-port") == second.header(b"x-client-port")
    await again.aclose()


async def test_at_most_pool_size_connections_per_origin(nursery: trio.Nursery) -> None:
    ports: set[int] = set()

    async def record(request: Request, responder: Responder) -> None:
        assert request.client is not None
        ports.add(request.client[1])
        await trio.sleep(0.01)
        await responder.respond(200, [], b"")

    _, port = await start_server(nursery, record)
    client = Client(pool_size=2, trust_env=False)

    async def one() -> None:
        await (await client.request("GET", f"http://127.0.0.1:{port}/")).read()

    async with trio.open_nursery() as many:
        for _ in range(10):
            many.start_soon(one)
    assert len(ports) == 2
    assert client.statistics() == PoolStatistics(2, 2, 0, 0)


async def test_waiting_for_a_slot_is_bounded_by_the_timeout(nursery: trio.Nursery) -> None:
    async def some_body(request: Request, responder: Responder) -> None:
        await responder.respond(200, [], b"unread")

    _, port = await start_server(nursery, some_body)
    client = Client(pool_size=1, trust_env=False)
    held = await client.request("GET", f"http://127.0.0.1:{port}/")
    with pytest.raises(PoolTimeout, match=r"timeout of 0\.05 s expired"):
        await client.request("GET", f"http://127.0.0.1:{port}/", timeout=0.05)
    await held.aclose()


async def test_a_stale_reused_connection_is_retried_once(nursery: trio.Nursery) -> None:
    connections = 0

    async def close_on_second(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        buffered = bytearray()
        await read_head(stream, buffered)
        await stream.send_all(OK)
        if connections == 1:
            await read_head(stream, buffered)  # read the request, then hang up
            await stream.aclose()
            return
        await trio.sleep_forever()

    port = await raw_server(nursery, close_on_second)
    client = Client(trust_env=False)
    url = f"http://127.0.0.1:{port}/"
    assert await (await client.request("GET", url)).read() == b"ok"
    assert await (await client.request("GET", url)).read() == b"ok"
    assert connections == 2


async def test_no_retry_after_a_byte_of_the_answer(nursery: trio.Nursery) -> None:
    connections = 0

    async def partial_head(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        buffered = bytearray()
        await read_head(stream, buffered)
        await stream.send_all(OK)
        await read_head(stream, buffered)
        await stream.send_all(b"HTTP/1.1 200")
        await stream.aclose()

    port = await raw_server(nursery, partial_head)
    client = Client(trust_env=False)
    url = f"http://127.0.0.1:{port}/"
    await (await client.request("GET", url)).read()
    with pytest.raises(RemoteProtocolError, match="mid-head"):
        await client.request("GET", url)
    assert connections == 1
    assert client.statistics() == PoolStatistics(0, 0, 0, 0)


async def test_a_new_connection_closed_before_answering_is_not_retried(
    nursery: trio.Nursery,
) -> None:
    async def hang_up(stream: trio.SocketStream) -> None:
        await read_head(stream, bytearray())
        await stream.aclose()

    port = await raw_server(nursery, hang_up)
    with pytest.raises(RemoteProtocolError, match="closed the connection without answering"):
        await Client(trust_env=False).request("GET", f"http://127.0.0.1:{port}/")


async def test_premature_close_mid_body_and_malformed_answers(nursery: trio.Nursery) -> None:
    async def bad(stream: trio.SocketStream) -> None:
        head = await read_head(stream, bytearray())
        if head.startswith(b"GET /short"):
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        else:
            await stream.send_all(b"HTTP/1.1 2x0 Nope\r\n\r\n")
        await stream.aclose()

    port = await raw_server(nursery, bad)
    client = Client(trust_env=False)
    response = await client.request("GET", f"http://127.0.0.1:{port}/short")
    with pytest.raises(RemoteProtocolError, match="mid-body"):
        await response.read()
    with pytest.raises(RemoteProtocolError, match="malformed response"):
        await client.request("GET", f"http://127.0.0.1:{port}/bad")
    assert client.statistics() == PoolStatistics(0, 0, 0, 0)


async def test_read_with_a_limit(nursery: trio.Nursery) -> None:
    async def big(request: Request, responder: Responder) -> None:
        await responder.respond(200, [], b"x" * 1000)

    _, port = await start_server(nursery, big)
    client = Client(trust_env=False)
    response = await client.request("GET", f"http://127.0.0.1:{port}/")
    with pytest.raises(ResponseTooLarge, match="larger than 100 bytes"):
        await response.read(limit=100)
    assert client.statistics().in_use == 0


async def test_read_timeouts_for_the_head_and_the_body(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def slow(stream: trio.SocketStream) -> None:
        head = await read_head(stream, bytearray())
        if head.startswith(b"GET /body"):
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await trio.sleep_forever()

    port = await raw_server(nursery, slow)
    client = Client(trust_env=False, read_timeout=10)
    with pytest.raises(ReadTimeout, match="within 10 s"):
        await client.request("GET", f"http://127.0.0.1:{port}/head")
    response = await client.request("GET", f"http://127.0.0.1:{port}/body")
    with pytest.raises(ReadTimeout, match="no data from the server within 10 s"):
        await response.read()
    no_read_timeout = Client(trust_env=False, read_timeout=None)
    with pytest.raises(ReadTimeout, match="timeout of 3 s expired"):
        await no_read_timeout.request("GET", f"http://127.0.0.1:{port}/head", timeout=3)
    assert client.statistics() == no_read_timeout.statistics() == PoolStatistics(0, 0, 0, 0)


async def test_a_read_timeout_fires_at_most_a_tick_late_and_counts_per_read(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # Read timeouts are checked by a watchdog a few times per timeout: each read gets
    # the whole timeout (a slow but steady body is not cut), and a stalled one ends
    # within a tick of its deadline.
    async def trickle(stream: trio.SocketStream) -> None:
        await read_head(stream, bytearray())
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
        for byte in b"abcd":
            await trio.sleep(6)
            await stream.send_all(bytes([byte]))
        await trio.sleep_forever()

    port = await raw_server(nursery, trickle)
    client = Client(trust_env=False, read_timeout=10)
    response = await client.request("GET", f"http://127.0.0.1:{port}/")
    pieces = [await response.receive_some() for _ in range(4)]
    assert pieces == [b"a", b"b", b"c", b"d"]
    start = trio.current_time()
    with pytest.raises(ReadTimeout, match="within 10 s"):
        await response.receive_some()
    assert 10 <= trio.current_time() - start <= 12.5
    assert client.statistics() == PoolStatistics(0, 0, 0, 0)


def test_read_timeouts_work_in_each_trio_run_a_client_is_used_in() -> None:
    # The watchdog is a system task of the run it started in; a later run starts its own.
    async def stall(stream: trio.SocketStream) -> None:
        await read_head(stream, bytearray())
        await trio.sleep_forever()

    client = Client(trust_env=False, read_timeout=5)

    async def one_run() -> None:
        async with trio.open_nursery() as nursery:
            port = await raw_server(nursery, stall)
            with pytest.raises(ReadTimeout):
                await client.request("GET", f"http://127.0.0.1:{port}/")
            nursery.cancel_scope.cancel()

    for _ in range(2):
        trio.run(one_run, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_connect_timeout(autojump_clock: trio.testing.MockClock) -> None:
    # A listening socket whose backlog is full: further connection attempts hang.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        try:
            client = Client(trust_env=False, connect_timeout=5)
            with pytest.raises(ConnectTimeout, match="within 5 s"):
                await client.request("GET", f"http://127.0.0.1:{port}/")
        finally:
            for filler in fillers:
                filler.close()


async def test_connect_error_names_the_origin_and_not_the_headers() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    client = Client(trust_env=False)
    with pytest.raises(ConnectError, match=f"cannot connect to 127.0.0.1:{port}") as info:
        await client.request(
            "GET", f"http://127.0.0.1:{port}/", [(b"authorization", b"Bearer sk-secret")]
        )
    assert "sk-secret" not in str(info.value)
    assert client.statistics() == PoolStatistics(0, 0, 0, 0)


async def test_a_finished_response_reads_nothing_of_the_next_request_on_its_connection(
    nursery: trio.Nursery,
) -> None:
    async def by_path(request: Request, responder: Responder) -> None:
        await responder.respond(200, [], b"BODY-FOR-" + request.target)

    _, port = await start_server(nursery, by_path)
    client = Client(pool_size=1, trust_env=False)
    first = await client.request("GET", f"http://127.0.0.1:{port}/a")
    assert await first.read() == b"BODY-FOR-/a"
    # The connection is back in the pool: the next request reuses it, and its answer's
    # bytes are waiting in the connection's buffer when the first response is read again.
    second = await client.request("GET", f"http://127.0.0.1:{port}/b")

    assert await first.receive_some() == b""
    assert await second.read() == b"BODY-FOR-/b"
    await client.aclose()
