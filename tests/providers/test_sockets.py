"""Providers against a real HTTP/1.1 server on 127.0.0.1: connections close and are reused.

These use real time (autojump does not mix with sockets); every test runs under a short
real timeout so a regression fails fast instead of hanging. The server runs in
pytest-trio's `nursery` fixture, which is cancelled when the test ends.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

import httpx2
import pytest
import trio

from benchmarks.fake_upstream import FakeConfig, run_fake_upstream
from pipeline import Chunk, Context, GatewayTimeoutError, ResponseStream, StreamError
from providers import HTTPProvider, OpenAIProvider, ProviderConfig

from ..conftest import make_request
from .helpers import KINDS, TEXT_EVENTS, RawUpstream, read_into

ALL_KINDS = pytest.mark.parametrize("kind", list(KINDS))
BOUND = 5.0


async def serve(
    kind: str, server: RawUpstream, nursery: trio.Nursery, **kwargs: Any
) -> HTTPProvider:
    """Start `server` and return a provider of `kind` pointed at it."""
    base_url = await server.start(nursery)
    return KINDS[kind](base_url + ("/v1" if kind == "openai" else ""), **kwargs)


async def cancel_soon(scope: trio.CancelScope) -> None:
    await trio.sleep(0.02)
    scope.cancel()


@ALL_KINDS
async def test_cancelling_the_consumer_mid_stream_closes_the_upstream_connection(
    kind: str, nursery: trio.Nursery
) -> None:
    server = RawUpstream(TEXT_EVENTS[kind]("a", "b", finish=False))
    async with aclosing(await serve(kind, server, nursery)) as provider:
        with trio.fail_after(BOUND):
            stream = await provider.execute(make_request(), Context())
            chunks = 0
            with trio.CancelScope() as consumer:
                async with stream:
                    async for _ in stream:
                        chunks += 1
                        if chunks == 2:
                            # Cancel while the consumer waits for a chunk that never comes.
                            nursery.start_soon(cancel_soon, consumer)
            assert consumer.cancelled_caught
            await server.hung_up.wait()
    assert server.connections == 1


@ALL_KINDS
async def test_a_cancelled_read_closes_the_connection_even_if_nobody_closes_the_stream(
    kind: str, nursery: trio.Nursery
) -> None:
    server = RawUpstream(TEXT_EVENTS[kind]("a", finish=False))
    async with aclosing(await serve(kind, server, nursery)) as provider:
        with trio.fail_after(BOUND):
            stream = await provider.execute(make_request(), Context())
            await stream.__anext__()
            with trio.move_on_after(0.05):
                while True:
                    await stream.__anext__()
            await server.hung_up.wait()


@ALL_KINDS
async def test_closing_the_stream_between_chunks_closes_the_connection(
    kind: str, nursery: trio.Nursery
) -> None:
    server = RawUpstream(TEXT_EVENTS[kind]("a", "b", finish=False))
    async with aclosing(await serve(kind, server, nursery)) as provider:
        with trio.fail_after(BOUND):
            stream = await provider.execute(make_request(), Context())
            await stream.__anext__()
            await server.sent.wait()
            assert not server.hung_up.is_set()
            await stream.aclose()
            await server.hung_up.wait()


@ALL_KINDS
async def test_a_finished_stream_leaves_its_connection_for_the_next_request(
    kind: str, nursery: trio.Nursery
) -> None:
    server = RawUpstream(TEXT_EVENTS[kind]("a", "b"), finish=True)
    async with aclosing(await serve(kind, server, nursery)) as provider:
        with trio.fail_after(BOUND):
            for _ in range(3):
                answer = await (await provider.execute(make_request(), Context())).collect()
                assert answer.text == "ab"
    assert (server.requests, server.connections) == (3, 1)


@ALL_KINDS
async def test_a_connection_dropped_mid_stream_is_a_stream_error(
    kind: str, nursery: trio.Nursery
) -> None:
    server = RawUpstream(TEXT_EVENTS[kind]("a", "b", finish=False), drop=True)
    received: list[Chunk] = []
    async with aclosing(await serve(kind, server, nursery)) as provider:
        with trio.fail_after(BOUND):
            stream = await provider.execute(make_request(), Context())
            with pytest.raises(StreamError, match="broke mid-stream") as info:
                await read_into(stream, received)
    assert len(received) >= 2
    assert not info.value.retryable


@ALL_KINDS
async def test_a_stream_that_stalls_longer_than_the_timeout_is_a_gateway_timeout(
    kind: str, nursery: trio.Nursery
) -> None:
    server = RawUpstream(TEXT_EVENTS[kind]("a", finish=False))
    received: list[Chunk] = []
    async with aclosing(await serve(kind, server, nursery, timeout=0.2)) as provider:
        with trio.fail_after(BOUND):
            stream = await provider.execute(make_request(), Context())
            with pytest.raises(
                GatewayTimeoutError, match=r"no data from the upstream for 0\.2s"
            ) as info:
                await read_into(stream, received)
            await server.hung_up.wait()
    assert received
    assert not info.value.retryable


async def test_the_pool_size_from_config_bounds_the_connections(nursery: trio.Nursery) -> None:
    server = RawUpstream(TEXT_EVENTS["openai"]("a", finish=False))
    base_url = await server.start(nursery)
    config = ProviderConfig(name="pooled", kind="openai", base_url=f"{base_url}/v1", pool_size=2)
    async with aclosing(OpenAIProvider.from_config(config)) as provider:
        assert provider.pool_size == 2
        with trio.fail_after(BOUND):
            first = await provider.execute(make_request(), Context())
            second = await provider.execute(make_request(), Context())
            third: list[ResponseStream] = []
            connected = trio.Event()

            async def wait_for_a_connection() -> None:
                third.append(await provider.execute(make_request(), Context()))
                connected.set()

            nursery.start_soon(wait_for_a_connection)
            await trio.sleep(0.1)
            assert (server.connections, third) == (2, [])
            await first.aclose()  # a stalled stream's connection is closed, not reused
            await connected.wait()
            assert server.connections == 3
            for stream in (second, *third):
                await stream.aclose()


def pool_states(provider: HTTPProvider) -> list[str]:
    """What each connection in the provider's pool is doing (`CONNECTING`, `HTTP/1.1, IDLE`)."""
    transport = provider.client._transport
    assert isinstance(transport, httpx2.AsyncHTTPTransport)
    return [connection.info() for connection in transport._pool.connections]


@pytest.mark.parametrize("stream", [True, False])
async def test_calls_cancelled_while_waiting_for_a_connection_leave_the_pool_usable(
    stream: bool,
) -> None:
    # Twenty callers share two connections to a slow upstream and all give up while most
    # of them still wait for a connection. httpcore 1.0 left connections assigned to such
    # waiters in CONNECTING forever (encode/httpcore#1093): the pool was used up for good.
    async with run_fake_upstream(FakeConfig(ttft=0.3)) as upstream:
        provider = OpenAIProvider(upstream.url + "/v1", pool_size=2, timeout=4 * BOUND)
        async with aclosing(provider):
            with trio.fail_after(BOUND):

                async def impatient() -> None:
                    with trio.move_on_after(0.1):
                        answer = await provider.execute(make_request(stream=stream), Context())
                        await answer.collect()

                async with trio.open_nursery() as callers:
                    for _ in range(20):
                        callers.start_soon(impatient)
                answer = await (await provider.execute(make_request(), Context())).collect()
            assert answer.text
            assert "CONNECTING" not in pool_states(provider)
