"""Providers against a real HTTP/1.1 server on 127.0.0.1: connections close and are reused.

These use real time (autojump does not mix with sockets); every wait is bounded by a short
real timeout so a regression fails fast instead of hanging.
"""

from __future__ import annotations

import pytest
import trio

from pipeline import Context, GatewayTimeoutError, StreamError
from providers import HTTPProvider

from ..conftest import make_request
from .helpers import KINDS, TEXT_EVENTS, RawUpstream

ALL_KINDS = pytest.mark.parametrize("kind", list(KINDS))
BOUND = 5.0


def provider_for(kind: str, base_url: str) -> HTTPProvider:
    if kind == "openai":
        base_url += "/v1"
    return KINDS[kind](base_url)


@ALL_KINDS
async def test_cancelling_the_consumer_mid_stream_closes_the_upstream_connection(
    kind: str,
) -> None:
    server = RawUpstream(TEXT_EVENTS[kind]("a", "b", finish=False))
    async with trio.open_nursery() as nursery:
        provider = provider_for(kind, await server.start(nursery))
        try:
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
        finally:
            await provider.aclose()
            nursery.cancel_scope.cancel()


@ALL_KINDS
async def test_a_cancelled_read_closes_the_connection_even_if_nobody_closes_the_stream(
    kind: str,
) -> None:
    server = RawUpstream(TEXT_EVENTS[kind]("a", finish=False))
    async with trio.open_nursery() as nursery:
        provider = provider_for(kind, await server.start(nursery))
        try:
            with trio.fail_after(BOUND):
                stream = await provider.execute(make_request(), Context())
                await stream.__anext__()
                with trio.move_on_after(0.05):
                    while True:
                        await stream.__anext__()
                await server.hung_up.wait()
        finally:
            await provider.aclose()
            nursery.cancel_scope.cancel()


@ALL_KINDS
async def test_closing_the_stream_between_chunks_closes_the_connection(kind: str) -> None:
    server = RawUpstream(TEXT_EVENTS[kind]("a", "b", finish=False))
    async with trio.open_nursery() as nursery:
        provider = provider_for(kind, await server.start(nursery))
        try:
            with trio.fail_after(BOUND):
                stream = await provider.execute(make_request(), Context())
                await stream.__anext__()
                await server.sent.wait()
                assert not server.hung_up.is_set()
                await stream.aclose()
                await server.hung_up.wait()
        finally:
            await provider.aclose()
            nursery.cancel_scope.cancel()


@ALL_KINDS
async def test_a_stream_that_stalls_longer_than_the_timeout_is_a_gateway_timeout(
    kind: str,
) -> None:
    server = RawUpstream(TEXT_EVENTS[kind]("a", finish=False))
    async with trio.open_nursery() as nursery:
        base_url = await server.start(nursery)
        provider = KINDS[kind](base_url + ("/v1" if kind == "openai" else ""), timeout=0.2)
        try:
            with trio.fail_after(BOUND):
                stream = await provider.execute(make_request(), Context())
                with pytest.raises(GatewayTimeoutError) as info:
                    async for _ in stream:
                        pass
                await server.hung_up.wait()
            assert not info.value.retryable
        finally:
            await provider.aclose()
            nursery.cancel_scope.cancel()


async def cancel_soon(scope: trio.CancelScope) -> None:
    await trio.sleep(0.02)
    scope.cancel()


@ALL_KINDS
async def test_a_finished_stream_leaves_its_connection_for_the_next_request(kind: str) -> None:
    server = RawUpstream(TEXT_EVENTS[kind]("a", "b"), finish=True)
    async with trio.open_nursery() as nursery:
        provider = provider_for(kind, await server.start(nursery))
        try:
            with trio.fail_after(BOUND):
                for _ in range(3):
                    answer = await (await provider.execute(make_request(), Context())).collect()
                    assert answer.text == "ab"
            assert (server.requests, server.connections) == (3, 1)
        finally:
            await provider.aclose()
            nursery.cancel_scope.cancel()


@ALL_KINDS
async def test_a_connection_dropped_mid_stream_is_a_stream_error(kind: str) -> None:
    server = RawUpstream(TEXT_EVENTS[kind]("a", "b", finish=False), drop=True)
    async with trio.open_nursery() as nursery:
        provider = provider_for(kind, await server.start(nursery))
        try:
            with trio.fail_after(BOUND):
                stream = await provider.execute(make_request(), Context())
                chunks = 0
                with pytest.raises(StreamError, match="broke mid-stream") as info:
                    async for _ in stream:
                        chunks += 1
            assert chunks >= 2
            assert not info.value.retryable
        finally:
            await provider.aclose()
            nursery.cancel_scope.cancel()
