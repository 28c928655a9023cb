"""The fake upstream speaks OpenAI chat completions: whole answers, streams, tool calls."""

from __future__ import annotations

import httpx
import msgspec

from benchmarks.fake_upstream import FakeUpstream, fake_text
from pipeline import ChatCompletion, Chunk

from ..helpers import parse_sse
from .bodies import CHAT, chat_body

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
        },
    },
}


def decode_chunks(body: str) -> list[Chunk]:
    """The chunks of an OpenAI stream that must end with `data: [DONE]`."""
    events = parse_sse(body)
    assert events[-1] == (None, "[DONE]")
    return [msgspec.json.decode(data, type=Chunk) for _, data in events[:-1]]


async def test_whole_answer_is_a_chat_completion_with_usage(fake_upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        response = await client.post(CHAT, json=chat_body("twelve chars"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    completion = msgspec.json.decode(response.content, type=ChatCompletion)
    assert completion.object == "chat.completion"
    assert completion.model == "fake-gpt"
    assert completion.text == fake_text(200)
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 50)
    assert completion.usage.total_tokens == 53


async def test_stream_has_role_content_deltas_finish_and_done(fake_upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        response = await client.post(
            CHAT, json=chat_body(stream=True), headers={"x-fake-chunks": "7"}
        )
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = decode_chunks(response.text)
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    content = [chunk.text for chunk in chunks[1:-1]]
    assert len(content) == 7
    assert all(content)
    assert "".join(content) == fake_text(200)
    assert chunks[-1].choices[0].delta.content is None
    assert chunks[-1].finish_reason == "stop"
    assert [chunk.usage for chunk in chunks] == [None] * len(chunks)
    assert '"usage"' not in response.text


async def test_stream_ends_with_a_usage_chunk_when_asked(fake_upstream: FakeUpstream) -> None:
    body = chat_body("abcd" * 10, stream=True, stream_options={"include_usage": True})
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        response = await client.post(CHAT, json=body)
    chunks = decode_chunks(response.text)
    assert chunks[-2].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 10
    assert chunks[-1].usage.completion_tokens == 50
    # Like OpenAI, every other chunk says `"usage": null` when usage was asked for.
    assert response.text.count('"usage":null') == len(chunks) - 1


async def test_the_token_limit_cuts_the_answer_with_finish_reason_length(
    fake_upstream: FakeUpstream,
) -> None:
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        whole = await client.post(CHAT, json=chat_body(max_tokens=5))
        streamed = await client.post(CHAT, json=chat_body(stream=True, max_completion_tokens=5))
    completion = msgspec.json.decode(whole.content, type=ChatCompletion)
    assert completion.text == fake_text(20)
    assert completion.choices[0].finish_reason == "length"
    chunks = decode_chunks(streamed.text)
    assert "".join(chunk.text for chunk in chunks) == fake_text(20)
    assert chunks[-1].finish_reason == "length"


async def test_a_tool_call_streams_as_id_and_name_then_argument_fragments(
    fake_upstream: FakeUpstream,
) -> None:
    body = chat_body(stream=True, tools=[WEATHER_TOOL])
    headers = {"x-fake-tool-calls": "true", "x-fake-chunks": "4"}
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        response = await client.post(CHAT, json=body, headers=headers)
    chunks = decode_chunks(response.text)
    first = chunks[0].choices[0].delta
    assert first.role == "assistant"
    assert first.content is None
    assert first.tool_calls is not None
    (start,) = first.tool_calls
    assert (start.index, start.id, start.type) == (0, "call_fake_0", "function")
    assert start.function is not None
    assert (start.function.name, start.function.arguments) == ("get_weather", "")
    fragments = []
    for chunk in chunks[1:-1]:
        (call,) = chunk.choices[0].delta.tool_calls or []
        assert (call.index, call.id) == (0, None)
        assert call.function is not None
        fragments.append(call.function.arguments or "")
    assert len(fragments) == 4
    assert msgspec.json.decode("".join(fragments)) == {
        "city": "fake",
        "days": 1,
        "unit": "celsius",
    }
    assert chunks[-1].finish_reason == "tool_calls"


async def test_a_whole_tool_call_answer_has_no_content(fake_upstream: FakeUpstream) -> None:
    body = chat_body(tools=[WEATHER_TOOL])
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        response = await client.post(CHAT, json=body, headers={"x-fake-tool-calls": "true"})
    completion = msgspec.json.decode(response.content, type=ChatCompletion)
    message = completion.choices[0].message
    assert message.content is None
    assert message.tool_calls is not None
    assert message.tool_calls[0].function.name == "get_weather"
    assert msgspec.json.decode(message.tool_calls[0].function.arguments)["city"] == "fake"
    assert completion.choices[0].finish_reason == "tool_calls"


async def test_tools_are_answered_with_text_unless_the_knob_says_so(
    fake_upstream: FakeUpstream,
) -> None:
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        response = await client.post(CHAT, json=chat_body(tools=[WEATHER_TOOL]))
    completion = msgspec.json.decode(response.content, type=ChatCompletion)
    assert completion.text == fake_text(200)
    assert completion.choices[0].message.tool_calls is None


async def test_an_invalid_body_gets_an_openai_error(fake_upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        no_messages = await client.post(CHAT, json={"model": "fake-gpt"})
        not_json = await client.post(CHAT, content=b"{nope")
    for response in (no_messages, not_json):
        assert response.status_code == 400
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
    assert "messages" in no_messages.json()["error"]["message"]


async def test_models_are_listed(fake_upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        response = await client.get("/v1/models")
    listing = response.json()
    assert listing["object"] == "list"
    assert [model["id"] for model in listing["data"]] == list(fake_upstream.config.models)
    assert all(model["object"] == "model" for model in listing["data"])


async def test_a_required_key_is_checked_and_never_echoed(fake_upstream: FakeUpstream) -> None:
    knob = {"x-fake-api-key": "sk-test-right"}
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        missing = await client.post(CHAT, json=chat_body(), headers=knob)
        wrong = await client.post(
            CHAT, json=chat_body(), headers={**knob, "authorization": "Bearer sk-test-wrong"}
        )
        right = await client.post(
            CHAT, json=chat_body(), headers={**knob, "authorization": "Bearer sk-test-right"}
        )
        models = await client.get("/v1/models", headers=knob)
    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert models.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert "sk-test" not in wrong.text
