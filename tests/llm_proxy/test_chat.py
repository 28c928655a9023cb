"""The official OpenAI SDK talks to the server unchanged: chat, streams, tools, legacy text."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import msgspec
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from pipeline import (
    Context,
    FunctionCall,
    Handler,
    Pipeline,
    Request,
    ResponseStream,
    Route,
    Router,
    Usage,
)
from providers import MockProvider

from ..helpers import sse_data
from .conftest import Start, chat_body, in_thread

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]
SDK = Callable[[str], openai.OpenAI]


async def test_sdk_non_streaming_chat(start_server: Start, sdk: SDK) -> None:
    url = await start_server(Pipeline(MockProvider("Hi there, friend!", chunks=4)))
    client = sdk(url)

    answer = await in_thread(lambda: client.chat.completions.create(model="mock", messages=USER))

    assert answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == "Hi there, friend!"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


async def test_sdk_streaming_chat(start_server: Start, sdk: SDK) -> None:
    url = await start_server(Pipeline(MockProvider("Hi there, friend!", chunks=4)))
    client = sdk(url)

    chunks = await in_thread(
        lambda: list(client.chat.completions.create(model="mock", messages=USER, stream=True))
    )

    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hi there, friend!"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    # The provider's usage chunk is not shown to a client that did not ask for it.
    assert all(c.usage is None and c.choices for c in chunks)


async def test_sdk_streaming_usage_when_asked(start_server: Start, sdk: SDK) -> None:
    url = await start_server(Pipeline(MockProvider("Hi there, friend!", chunks=4)))
    client = sdk(url)

    chunks = await in_thread(
        lambda: list(
            client.chat.completions.create(
                model="mock",
                messages=USER,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    )

    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


async def test_sdk_tool_calls(start_server: Start, sdk: SDK) -> None:
    calls = [FunctionCall("get_weather", '{"city": "Paris", "unit": "celsius"}')]
    url = await start_server(Pipeline(MockProvider(tool_calls=calls, chunks=4)))
    client = sdk(url)
    tools: list[ChatCompletionToolParam] = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]

    answer = await in_thread(
        lambda: client.chat.completions.create(model="mock", messages=USER, tools=tools)
    )
    streamed = await in_thread(
        lambda: list(
            client.chat.completions.create(model="mock", messages=USER, tools=tools, stream=True)
        )
    )

    call = answer.choices[0].message.tool_calls[0]
    assert answer.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}
    fragments = [t for c in streamed for t in c.choices[0].delta.tool_calls or []]
    assert fragments[0].function.name == "get_weather"
    assert json.loads("".join(f.function.arguments or "" for f in fragments)) == {
        "city": "Paris",
        "unit": "celsius",
    }
    assert streamed[-1].choices[0].finish_reason == "tool_calls"


async def test_sdk_legacy_completions(start_server: Start, sdk: SDK) -> None:
    provider = MockProvider(echo=True, chunks=3, record=True)
    url = await start_server(Pipeline(provider))
    client = sdk(url)

    whole = await in_thread(
        lambda: client.completions.create(model="mock", prompt="Say this back", max_tokens=50)
    )
    pieces = await in_thread(
        lambda: list(
            client.completions.create(
                model="mock",
                prompt=["Say this back"],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    )

    assert whole.object == "text_completion"
    assert whole.id.startswith("cmpl-")
    assert all(p.id.startswith("cmpl-") for p in pieces)
    assert whole.choices[0].text == "Say this back"
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None
    assert "".join(p.choices[0].text for p in pieces if p.choices) == "Say this back"
    assert pieces[-1].choices == []
    assert pieces[-1].usage is not None
    # The prompt reached the provider as the user message of a chat request.
    assert provider.requests[0].messages[0].role == "user"
    assert provider.requests[0].messages[0].text == "Say this back"
    assert provider.requests[0].max_tokens == 50


async def test_sdk_lists_the_router_models(start_server: Start, sdk: SDK) -> None:
    mock = MockProvider()
    router = Router({"fast": Route(mock, "a"), "slow": Route(mock, "b")})
    url = await start_server(Pipeline(router))

    page = await in_thread(lambda: sdk(url).models.list())

    assert [m.id for m in page.data] == ["fast", "slow"]
    assert all(m.object == "model" for m in page.data)


async def test_sdk_retrieves_one_model(start_server: Start, sdk: SDK) -> None:
    router = Router({"fast": Route(MockProvider(), "a"), "vendor/slow": Route(MockProvider(), "b")})
    url = await start_server(Pipeline(router))
    client = sdk(url)

    fast = await in_thread(lambda: client.models.retrieve("fast"))
    slashed = await in_thread(lambda: client.models.retrieve("vendor/slow"))
    with pytest.raises(openai.NotFoundError, match="The model `nope` does not exist") as missing:
        await in_thread(lambda: client.models.retrieve("nope"))

    assert (fast.id, fast.object) == ("fast", "model")
    assert slashed.id == "vendor/slow"
    assert isinstance(missing.value.body, dict)
    assert missing.value.body["code"] == "model_not_found"


async def test_models_come_from_the_stack_callable(
    start_server: Start, http: httpx.AsyncClient
) -> None:
    seen: list[Context] = []

    async def models_for(ctx: Context) -> list[str]:
        seen.append(ctx)
        return ["only-this"]

    url = await start_server(Pipeline(MockProvider()), models_for=models_for)

    response = await http.get(f"{url}/v1/models", headers={"authorization": "Bearer k"})

    assert [m["id"] for m in response.json()["data"]] == ["only-this"]
    assert seen[0].headers["authorization"] == "Bearer k"


async def test_response_headers(start_server: Start, http: httpx.AsyncClient) -> None:
    async def limits(request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        ctx.response_headers["x-ratelimit-remaining-requests"] = "41"
        return await call_next(request, ctx)

    url = await start_server(Pipeline(MockProvider(), [limits]))

    whole = await http.post(f"{url}/v1/chat/completions", json=chat_body())
    streamed = await http.post(f"{url}/v1/chat/completions", json=chat_body(stream=True))

    for response in (whole, streamed):
        assert response.status_code == 200
        assert response.headers["x-request-id"].startswith("req_")
        assert response.headers["x-ratelimit-remaining-requests"] == "41"
        assert float(response.headers["x-proxy-overhead-ms"]) >= 0
    assert whole.headers["x-request-id"] != streamed.headers["x-request-id"]
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = sse_data(streamed.text)
    assert events[-1] == "[DONE]"
    assert all(msgspec.json.decode(e)["object"] == "chat.completion.chunk" for e in events[:-1])


async def test_overhead_excludes_the_upstream_wait(
    start_server: Start, http: httpx.AsyncClient
) -> None:
    # The provider takes at least 300 ms; the proxy's own share must not include them.
    url = await start_server(Pipeline(MockProvider(chunks=3, ttft=0.3)))

    response = await http.post(f"{url}/v1/chat/completions", json=chat_body())

    assert float(response.headers["x-proxy-overhead-ms"]) < 300


async def test_unknown_fields_reach_the_provider(
    start_server: Start, http: httpx.AsyncClient
) -> None:
    provider = MockProvider(record=True)
    url = await start_server(Pipeline(provider))

    await http.post(f"{url}/v1/chat/completions", json=chat_body(reasoning_effort="low"))

    assert provider.requests[0].extra == {"reasoning_effort": "low"}


async def test_healthz_and_metrics(start_server: Start, http: httpx.AsyncClient) -> None:
    plain = await start_server(Pipeline(MockProvider()))
    exported = await start_server(
        Pipeline(MockProvider()),
        metrics=lambda: (b"proxy_requests_total 3\n", "text/plain; version=0.0.4"),
    )

    health = await http.get(f"{plain}/healthz")
    head = await http.head(f"{plain}/healthz")
    missing = await http.get(f"{plain}/metrics")
    metrics = await http.get(f"{exported}/metrics")

    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert health.headers["x-request-id"].startswith("req_")
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["x-request-id"].startswith("req_")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    assert metrics.status_code == 200
    assert metrics.headers["content-type"] == "text/plain; version=0.0.4"
    assert metrics.content == b"proxy_requests_total 3\n"


async def test_usage_fields_on_content_chunks_are_stripped_unless_asked(
    start_server: Start, http: httpx.AsyncClient
) -> None:
    # Some upstreams put usage on the last content chunk rather than on a chunk of its own.
    async def usage_everywhere(
        request: Request, ctx: Context, call_next: Handler
    ) -> ResponseStream:
        stream = await call_next(request, ctx)
        return stream.map(
            lambda c: msgspec.structs.replace(c, usage=Usage(1, 2, 3)) if c.choices else None
        )

    url = await start_server(Pipeline(MockProvider(chunks=3), [usage_everywhere]))

    plain = await http.post(f"{url}/v1/chat/completions", json=chat_body(stream=True))
    asked = await http.post(
        f"{url}/v1/chat/completions",
        json=chat_body(stream=True, stream_options={"include_usage": True}),
    )

    plain_events = [msgspec.json.decode(e) for e in sse_data(plain.text)[:-1]]
    asked_events = [msgspec.json.decode(e) for e in sse_data(asked.text)[:-1]]
    assert len(plain_events) == len(asked_events) == 4
    assert all("usage" not in e for e in plain_events)
    assert all(e["usage"]["total_tokens"] == 3 for e in asked_events)


async def test_a_failing_metrics_exporter_is_a_500(
    start_server: Start, http: httpx.AsyncClient
) -> None:
    def broken() -> tuple[bytes, str]:
        raise RuntimeError("registry gone")

    url = await start_server(Pipeline(MockProvider()), metrics=broken)

    response = await http.get(f"{url}/metrics")

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
