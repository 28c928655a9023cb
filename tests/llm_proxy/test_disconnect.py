"""A client that hangs up cancels the upstream call at once, wherever the request is.

Each test runs against an `Upstream`: something slow behind the pipeline that can tell
whether its call was cancelled. The mock provider is one; `OpenAIProvider` in front of the
fake LLM server, behind rate and concurrency limits, is another: there the fake's own
record of the connection closing proves the cancellation reached the upstream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import httpx
import pytest
import trio

from benchmarks.fake_upstream import FakeUpstream
from middlewares import ConcurrencyLimiter, MemoryStore, RateLimiter
from pipeline import (
    Context,
    Handler,
    Middleware,
    Outcome,
    Pipeline,
    Request,
    ResponseStream,
    StreamEnd,
)
from providers import MockProvider, OpenAIProvider

from .conftest import Start, chat_body, eventually

CHUNKS = 40


class Upstream(Protocol):
    """A slow upstream behind a pipeline, and what it saw."""

    pipeline: Pipeline

    def started(self) -> bool:
        """The upstream call is in progress."""
        ...

    def cancelled(self) -> bool:
        """The upstream call was given up before its end, and its resources released."""
        ...


class SlowMock:
    """The mock provider, slow at the chosen place; stream ends are recorded by a middleware.

    Args:
      where: "execute" (the provider has not returned a stream yet), "first" (the stream
        exists, its first chunk is slow) or "chunks" (every chunk is slow).
    """

    def __init__(self, where: str) -> None:
        self.ends: list[StreamEnd] = []
        self.in_execute = False
        self.execute_cancelled = False
        handler = self._hang if where == "execute" else None
        self.provider = MockProvider(
            chunks=CHUNKS,
            handler=handler,
            ttft=30.0 if where == "first" else 0.0,
            chunk_delay=0.5 if where == "chunks" else 0.0,
        )
        self.pipeline = Pipeline(self.provider, [self._record])

    async def _hang(self, request: Request, ctx: Context) -> str:
        self.in_execute = True
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.execute_cancelled = True
            raise
        return ""

    async def _record(self, request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        stream = await call_next(request, ctx)
        return stream.observe(on_end=self.ends.append)

    def started(self) -> bool:
        return self.in_execute or self.provider.open_streams == 1

    def cancelled(self) -> bool:
        if self.in_execute:
            return self.execute_cancelled and self.provider.open_streams == 0
        return (
            self.provider.open_streams == 0
            and self.provider.closed_streams == 1
            and len(self.ends) == 1
            and self.ends[0].outcome is Outcome.CANCELLED
            and self.ends[0].chunks < CHUNKS
        )


class SlowFake:
    """The fake LLM server behind `OpenAIProvider`, slow at the chosen place.

    A rate limiter reserves a large token estimate for the request and a concurrency
    limiter takes the only slot; `cancelled()` holds once the fake saw the connection
    close before the answer was complete, the slot is free and the estimate was settled
    down to what the request used.

    Args:
      where: "execute" or "first" (the first byte is slow: a stream's first event, a
        whole answer's headers) or "chunks" (every chunk is slow).
      fake: the running fake upstream.
    """

    ESTIMATE = 50_000
    """Tokens reserved for the answer; what a request that used them would be charged."""

    def __init__(self, where: str, fake: FakeUpstream) -> None:
        self.fake = fake
        knobs = {"x-fake-chunks": str(CHUNKS)}
        if where == "chunks":
            knobs["x-fake-chunk-delay"] = "0.5"
        else:
            knobs["x-fake-ttft"] = "30"
        self.store = MemoryStore()
        limits: list[Middleware] = [
            RateLimiter(
                self.store, tokens_per_minute=2 * self.ESTIMATE, default_output_tokens=self.ESTIMATE
            ),
            ConcurrencyLimiter(self.store, max_concurrency=1),
        ]
        self.pipeline = Pipeline(OpenAIProvider(f"{fake.url}/v1", headers=knobs), limits)

    def started(self) -> bool:
        return len(self.fake.requests) == 1

    def cancelled(self) -> bool:
        held = self.store.statistics()
        tokens = [level for key, level in held.levels.items() if key.startswith("rl:tok:")]
        return (
            [gone.request for gone in self.fake.disconnects] == [0]
            and held.slots == {}
            and len(tokens) == 1
            and tokens[0] < self.ESTIMATE / 10
        )


UPSTREAMS: dict[str, Callable[[str, FakeUpstream], Upstream]] = {
    "mock": lambda where, fake: SlowMock(where),
    "fake-openai": SlowFake,
}


@pytest.fixture(params=sorted(UPSTREAMS))
async def make_upstream(
    request: pytest.FixtureRequest, fake_upstream: FakeUpstream
) -> Callable[[str], Upstream]:
    make = UPSTREAMS[request.param]
    return lambda where: make(where, fake_upstream)


async def hang_up_when(
    http: httpx.AsyncClient, url: str, stream: bool, ready: Callable[[], bool]
) -> None:
    """Send a request and drop the connection once `ready()` holds."""
    async with trio.open_nursery() as nursery:

        async def send() -> None:
            await http.post(f"{url}/v1/chat/completions", json=chat_body(stream=stream))

        nursery.start_soon(send)
        await eventually(ready)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("where", ["execute", "first"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
async def test_hang_up_before_the_first_byte(
    start_server: Start,
    http: httpx.AsyncClient,
    make_upstream: Callable[[str], Upstream],
    where: str,
    stream: bool,
) -> None:
    upstream = make_upstream(where)
    url = await start_server(upstream.pipeline)

    await hang_up_when(http, url, stream, upstream.started)

    await eventually(upstream.cancelled)


async def test_hang_up_mid_stream(
    start_server: Start, http: httpx.AsyncClient, make_upstream: Callable[[str], Upstream]
) -> None:
    upstream = make_upstream("chunks")
    url = await start_server(upstream.pipeline)

    async with http.stream(
        "POST", f"{url}/v1/chat/completions", json=chat_body(stream=True)
    ) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                break
    # Leaving the block with the body unread closes the connection.

    await eventually(upstream.cancelled)


async def test_hang_up_while_a_whole_answer_is_collected(
    start_server: Start, http: httpx.AsyncClient, make_upstream: Callable[[str], Upstream]
) -> None:
    upstream = make_upstream("chunks")
    url = await start_server(upstream.pipeline)

    await hang_up_when(http, url, False, upstream.started)

    await eventually(upstream.cancelled)


async def test_the_server_serves_on_after_hang_ups(
    start_server: Start, http: httpx.AsyncClient
) -> None:
    upstream = SlowMock("chunks")
    url = await start_server(upstream.pipeline)
    for _ in range(3):
        with trio.move_on_after(0.05):
            await http.post(f"{url}/v1/chat/completions", json=chat_body(stream=True))

    upstream.provider.chunk_delay = 0.0
    response = await http.post(f"{url}/v1/chat/completions", json=chat_body())

    assert response.status_code == 200
    await eventually(lambda: upstream.provider.open_streams == 0)
