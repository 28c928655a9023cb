"""Fixtures for the server tests: a real server on 127.0.0.1, and clients for it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from typing import Any

import httpx
import openai
import pytest
import trio

from benchmarks.fake_upstream import FakeUpstream
from llm_proxy import build_stack, parse_config, serve
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


UPSTREAM_KEY = "sk-upstream-0123456789abcdef"


def doors_config(upstream_url: str, extra: str = "") -> str:
    """A stack with one model per provider kind over the fake upstream, and a mock."""
    return f"""
[log]
level = "error"

[cache]
enabled = true

[[providers]]
name = "oa"
kind = "openai"
base_url = "{upstream_url}/v1"
api_key_env = "TEST_UPSTREAM_KEY"
options = {{ responses = true }}

[[providers]]
name = "chat-only"
kind = "openai"
base_url = "{upstream_url}/v1"
api_key_env = "TEST_UPSTREAM_KEY"

[[providers]]
name = "an"
kind = "anthropic"
base_url = "{upstream_url}"
api_key_env = "TEST_UPSTREAM_KEY"

[[providers]]
name = "local"
kind = "mock"
options = {{ text = "Hi from the mock", chunks = 3 }}

[[models]]
name = "gpt"
provider = "oa"
upstream_model = "fake-gpt"

[[models]]
name = "vllm"
provider = "chat-only"
upstream_model = "fake-vllm"

[[models]]
name = "claude"
provider = "an"
upstream_model = "fake-claude"

[[models]]
name = "mock"
provider = "local"
{extra}
"""


@pytest.fixture
def fake(fake_upstream: FakeUpstream) -> FakeUpstream:
    """The shared fake upstream (OpenAI chat, Responses, embeddings, and Anthropic)."""
    return fake_upstream


@pytest.fixture
async def doors(start_server: Start, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> str:
    """The server over `doors_config`: its URL."""
    monkeypatch.setenv("TEST_UPSTREAM_KEY", UPSTREAM_KEY)
    stack = build_stack(parse_config(doors_config(fake.url)))
    return await start_server(stack.pipeline, models_for=stack.models_for)
