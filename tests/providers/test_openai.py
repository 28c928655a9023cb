"""OpenAIProvider: requests forwarded as sent, chunks decoded as they come."""

from __future__ import annotations

import json

import pytest

from pipeline import (
    Context,
    FunctionDef,
    ProviderError,
    StreamError,
    Tool,
    decode_request,
    estimate_tokens,
)
from providers import OpenAIProvider, ServerSentEvent
from providers._openai import _OpenAIEvents

from ..conftest import make_request
from .helpers import (
    KEY,
    Upstream,
    event_response,
    held_while_feeding,
    json_response,
    make_provider,
    openai_chunk,
)
from .helpers import openai_text_events as text_events

COMPLETION = {
    "id": "chatcmpl-9",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-test",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hi there"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}

TOOL_CALL_EVENTS = [
    openai_chunk(
        role="assistant",
        tool_calls=[
            {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ],
    ),
    openai_chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}]),
    openai_chunk(tool_calls=[{"index": 0, "function": {"arguments": '"Paris"}'}}]),
    openai_chunk(finish="tool_calls"),
    openai_chunk(usage={"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}),
    "[DONE]",
]


def provider(upstream: Upstream, **kwargs: object) -> OpenAIProvider:
    result = make_provider("openai", upstream, **kwargs)  # type: ignore[arg-type]
    assert isinstance(result, OpenAIProvider)
    return result


async def test_streamed_chunks_are_decoded_and_the_usage_chunk_is_kept() -> None:
    upstream = Upstream(event_response(text_events("Hel", "lo")))
    openai = provider(upstream)
    async with await openai.execute(make_request("hi"), Context()) as stream:
        chunks = [chunk async for chunk in stream]
    await openai.aclose()

    request = upstream.request
    assert request.method == "POST"
    assert request.url == f"{upstream.url}/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["accept"] == "text/event-stream"
    assert upstream.body["stream"] is True
    assert upstream.body["stream_options"] == {"include_usage": True}
    # The opening role chunk carries nothing else: its role comes with the first text.
    assert [c.text for c in chunks] == ["Hel", "lo", "", ""]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].finish_reason == "stop"
    # The provider never strips usage: the server does, for clients that did not ask.
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 12
    assert upstream.stream.closed


async def test_unknown_request_fields_are_forwarded() -> None:
    upstream = Upstream(event_response(text_events("x")))
    request = decode_request(
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true,'
        b' "reasoning_effort": "low", "top_k": 5}'
    )
    stream = await provider(upstream).execute(request, Context())
    await stream.collect()
    assert upstream.body["reasoning_effort"] == "low"
    assert upstream.body["top_k"] == 5


async def test_a_whole_answer_is_decoded_and_streamed_from_the_response() -> None:
    upstream = Upstream(json_response(COMPLETION))
    request = make_request("hi", stream=False, stream_options=None)
    response = await (await provider(upstream).execute(request, Context())).collect()
    assert upstream.request.headers["accept"] == "application/json"
    assert not upstream.body.get("stream")
    assert "stream_options" not in upstream.body
    assert response.text == "Hi there"
    assert response.choices[0].finish_reason == "stop"
    assert response.usage is not None
    assert response.usage.total_tokens == 5


async def test_stream_options_are_dropped_from_a_request_that_does_not_stream() -> None:
    upstream = Upstream(json_response(COMPLETION))
    request = decode_request(
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}],'
        b' "stream_options": {"include_usage": true}}'
    )
    await (await provider(upstream).execute(request, Context())).collect()
    assert "stream_options" not in upstream.body


async def test_streamed_tool_calls_pass_through() -> None:
    upstream = Upstream(event_response(TOOL_CALL_EVENTS, per_read=2))
    tools = [Tool(FunctionDef("get_weather", parameters={"type": "object"}))]
    request = make_request("weather?", tools=tools, tool_choice="auto")
    response = await (await provider(upstream).execute(request, Context())).collect()
    assert upstream.body["tools"][0]["function"]["name"] == "get_weather"
    assert upstream.body["tool_choice"] == "auto"
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert (call.id, call.function.name, call.function.arguments) == (
        "call_1",
        "get_weather",
        '{"city": "Paris"}',
    )


async def test_whole_tool_calls_pass_through() -> None:
    completion = {
        **COMPLETION,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_7",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a": 1}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
    }
    upstream = Upstream(json_response(completion))
    response = await (
        await provider(upstream).execute(make_request(stream=False), Context())
    ).collect()
    assert response.choices[0].message.tool_calls is not None
    assert response.choices[0].message.tool_calls[0].function.arguments == '{"a": 1}'
    assert response.choices[0].finish_reason == "tool_calls"


async def test_without_a_key_no_authorization_is_sent() -> None:
    upstream = Upstream(event_response(text_events("x")))
    stream = await provider(upstream, api_key=None).execute(make_request(), Context())
    await stream.collect()
    assert "authorization" not in upstream.request.headers


async def test_usage_is_estimated_when_the_upstream_sends_none() -> None:
    events = [openai_chunk("abcdefgh", role="assistant"), openai_chunk(finish="stop"), "[DONE]"]
    upstream = Upstream(event_response(events))
    stream = await provider(upstream).execute(make_request("a" * 40), Context())
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2
    assert chunks[-1].usage.prompt_tokens == 4 + 10


def test_a_long_stream_is_not_kept_to_estimate_its_usage() -> None:
    # 5 MB of answer pass through; an estimate needs only their length.
    piece = "é" * 10_000
    translator = _OpenAIEvents(make_request())
    events = (ServerSentEvent(json.dumps(openai_chunk(piece))) for _ in range(500))
    assert held_while_feeding(translator, events) < 1_000_000
    translator.feed(ServerSentEvent(json.dumps(openai_chunk(finish="stop"))))
    usage = translator.finish()
    assert usage is not None
    assert usage.usage is not None
    assert usage.usage.completion_tokens == estimate_tokens(piece * 500)


async def test_an_error_event_mid_stream_becomes_a_stream_error_with_its_message() -> None:
    events = [
        openai_chunk("partial", role="assistant"),
        {"error": {"message": "The server had an error", "type": "server_error"}},
    ]
    upstream = Upstream(event_response(events))
    stream = await provider(upstream).execute(make_request(), Context())
    assert (await stream.__anext__()).text == "partial"
    with pytest.raises(StreamError, match="The server had an error") as info:
        await stream.__anext__()
    assert not info.value.retryable
    assert upstream.stream.closed


def azure_filter_chunk(delta: object) -> dict[str, object]:
    """Azure's content-filter chunk: filter results, and no delta or a null one."""
    choice: dict[str, object] = {
        "index": 0,
        "finish_reason": None,
        "content_filter_offsets": {"check_offset": 3, "start_offset": 3, "end_offset": 9},
        "content_filter_results": {"hate": {"filtered": False, "severity": "safe"}},
    }
    if delta != "absent":
        choice["delta"] = delta
    return {"id": "c", "object": "chat.completion.chunk", "created": 1.7e9, "model": "m",
            "choices": [choice]}  # fmt: skip


@pytest.mark.parametrize("delta", ["absent", None])
async def test_chunks_without_a_delta_are_read_as_empty_ones(delta: object) -> None:
    events = text_events("Hel", "lo")
    events.insert(2, azure_filter_chunk(delta))
    upstream = Upstream(event_response(events))
    response = await (await provider(upstream).execute(make_request(), Context())).collect()
    assert response.text == "Hello"
    assert response.choices[0].finish_reason == "stop"


async def test_a_chunk_that_cannot_be_repaired_is_still_malformed() -> None:
    broken = azure_filter_chunk(None)
    broken["choices"] = "none"
    upstream = Upstream(event_response([*text_events("a", finish=False), broken]))
    stream = await provider(upstream).execute(make_request(), Context())
    with pytest.raises(StreamError, match=r"malformed data: Expected `array`"):
        await stream.collect()


async def test_validate_lists_the_models_with_the_key() -> None:
    upstream = Upstream(json_response({"object": "list", "data": []}))
    await provider(upstream).validate()
    assert upstream.request.method == "GET"
    assert upstream.request.url == f"{upstream.url}/v1/models"
    assert upstream.request.headers["authorization"] == f"Bearer {KEY}"


async def test_validate_reports_a_wrong_key() -> None:
    body = {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}
    upstream = Upstream(json_response(body, status=401))
    with pytest.raises(ProviderError, match="Incorrect API key provided") as info:
        await provider(upstream).validate()
    assert (info.value.upstream_status, info.value.status) == (401, 502)
    assert info.value.code == "invalid_api_key"
