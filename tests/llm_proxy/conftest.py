"""Fixtures for the server tests: a real server on 127.0.0.1, and clients for it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from typing import Any

import httpx
import openai
import pytest
import trio

from llm_proxy import serve
from pipeline import Pipeline

Start = Callable[..., Awaitable[str]]


@pytest.fixture
def start_server(nursery: trio.Nursery) -> Start:
    """`url = await start_server(pipeline, **serve_options)`: a server on a free port.

    The server runs until the test ends (the nursery is cancelled then).
    """

    async def start(pipeline: Pipeline, **options: Any) -> str:
        options.setdefault("handle_signals", False)
        url: str = await nursery.start(
            partial(serve, pipeline, host="127.0.0.1", port=0, **options)
        )
        return url

    return start


@pytest.fixture
def sdk() -> Iterator[Callable[[str], openai.OpenAI]]:
    """`client = sdk(url)`: the official OpenAI client pointed at the server.

    It is the synchronous client: call it through `trio.to_thread.run_sync`.
    """
    clients: list[openai.OpenAI] = []

    def make(url: str) -> openai.OpenAI:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0, timeout=20.0)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client for what the SDK cannot send (bad JSON, chunked bodies, hang-ups)."""
    async with httpx.AsyncClient(timeout=20.0) as client:
        yield client


async def in_thread(fn: Callable[[], Any]) -> Any:
    """Run a blocking SDK call without blocking the server, which runs in this thread's trio."""
    return await trio.to_thread.run_sync(fn)


WAIT = 10.0
"""Seconds a test waits for something that should happen at once; only a failure waits."""


async def eventually(predicate: Callable[[], bool]) -> None:
    """Wait until `predicate()` holds (the server works in other tasks); fail after `WAIT`."""
    with trio.fail_after(WAIT):
        while True:
            if predicate():
                return
            await trio.sleep(0.01)


def chat_body(model: str = "mock", *, stream: bool = False, **fields: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Hello"}],
        "stream": stream,
        **fields,
    }
