"""The ASGI adapter: `asgi_app(ProxyApp(...))` served by hypercorn (the `asgi` extra).

A smaller set than the engine's: a whole answer, a stream, a body over the limit, and a
client that hangs up cancelling the upstream call.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from llm_proxy import ProxyApp, asgi_app
from pipeline import Context, Pipeline, Request
from providers import MockProvider

from ..helpers import sse_data

hypercorn_trio = pytest.importorskip("hypercorn.trio")
hypercorn_config = pytest.importorskip("hypercorn.config")


async def serve_asgi(nursery: trio.Nursery, app: ProxyApp, **options: Any) -> str:
    """Serve `asgi_app(app)` with hypercorn's trio worker on a free port; return its URL."""
    config = hypercorn_config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.loglevel = "WARNING"
    binds: list[str] = await nursery.start(
        lambda task_status: hypercorn_trio.serve(
            asgi_app(app, **options), config, task_status=task_status
        )
    )
    return binds[0]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as http:
        yield http


CHAT = {"model": "mock-1", "messages": [{"role": "user", "content": "hello there"}]}


async def test_a_whole_answer(nursery: trio.Nursery, client: httpx.AsyncClient) -> None:
    url = await serve_asgi(nursery, ProxyApp(Pipeline(MockProvider(text="Hi from ASGI."))))
    response = await client.post(f"{url}/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "Hi from ASGI."


async def test_a_stream(nursery: trio.Nursery, client: httpx.AsyncClient) -> None:
    url = await serve_asgi(nursery, ProxyApp(Pipeline(MockProvider(text="one two three"))))
    response = await client.post(f"{url}/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_data(response.text)
    assert events[-1] == "[DONE]"
    text = "".join(
        choice["delta"].get("content") or ""
        for event in events[:-1]
        for choice in json.loads(event)["choices"]
    )
    assert text == "one two three"


async def test_a_body_over_the_limit_is_a_413(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    app = ProxyApp(Pipeline(MockProvider()))
    url = await serve_asgi(nursery, app, max_body_bytes=1000)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    response = await client.post(f"{url}/v1/chat/completions", json=big)
    assert response.status_code == 413
    assert response.json()["error"]["message"] == "The request body is larger than 1000 bytes."


async def test_a_client_that_hangs_up_cancels_the_upstream_call(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    started, cancelled = trio.Event(), trio.Event()

    async def hang(request: Request, ctx: Context) -> str:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()
        return ""

    url = await serve_asgi(nursery, ProxyApp(Pipeline(MockProvider(handler=hang))))

    async def call() -> None:
        await client.post(f"{url}/v1/chat/completions", json=CHAT)

    with trio.fail_after(10):
        async with trio.open_nursery() as calls:
            calls.start_soon(call)
            await started.wait()
            calls.cancel_scope.cancel()  # the client closes its connection
        await cancelled.wait()
