"""AnthropicProvider: the Messages API translated to and from the OpenAI shape."""

from __future__ import annotations

import re
from typing import Any

import pytest

from pipeline import (
    AudioPart,
    Context,
    FunctionCall,
    FunctionDef,
    ImagePart,
    ImageURL,
    Message,
    ProviderError,
    Request,
    StreamError,
    TextPart,
    Tool,
    ToolCall,
    ValidationError,
    decode_request,
)
from providers import AnthropicProvider
from providers._anthropic import to_messages_request

from ..conftest import make_request
from .helpers import (
    KEY,
    Upstream,
    anthropic_delta,
    anthropic_event,
    anthropic_start,
    anthropic_stop,
    anthropic_text_events,
    event_response,
    json_response,
)
from .helpers import make_provider as _make_provider


def make_provider(upstream: Upstream, **kwargs: Any) -> AnthropicProvider:
    provider = _make_provider("anthropic", upstream, **kwargs)
    assert isinstance(provider, AnthropicProvider)
    return provider


def translate(request: Request, default_max_tokens: int = 4096) -> dict[str, Any]:
    return to_messages_request(request, default_max_tokens)


def chat(*messages: Message, **fields: Any) -> Request:
    return Request(model="claude-test", messages=list(messages), **fields)


# -- requests ------------------------------------------------------------------------------


async def test_the_request_goes_to_messages_with_the_anthropic_headers() -> None:
    upstream = Upstream(event_response(anthropic_text_events("hi")))
    provider = make_provider(upstream)
    await (await provider.execute(make_request(), Context())).collect()
    request = upstream.request
    assert str(request.url) == "https://upstream.test/v1/messages"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    assert upstream.body["stream"] is True


async def test_the_version_and_default_max_tokens_come_from_the_options() -> None:
    upstream = Upstream(event_response(anthropic_text_events("hi")))
    provider = make_provider(upstream, version="2099-01-01", max_tokens=99)
    await (await provider.execute(make_request(), Context())).collect()
    assert upstream.request.headers["anthropic-version"] == "2099-01-01"
    assert upstream.body["max_tokens"] == 99


def test_system_and_developer_messages_become_the_system_prompt() -> None:
    body = translate(
        chat(
            Message(role="system", content="Be terse."),
            Message(role="developer", content=[TextPart("Use metric units.")]),
            Message(role="user", content="Hi"),
        )
    )
    assert body["system"] == "Be terse.\n\nUse metric units."
    assert body["messages"] == [{"role": "user", "content": "Hi"}]
    assert body["model"] == "claude-test"


def test_sampling_parameters_and_limits() -> None:
    body = translate(
        chat(Message(role="user", content="Hi"), stop="END", temperature=0.3, top_p=0.9, seed=4)
    )
    assert body["max_tokens"] == 4096
    assert body["stop_sequences"] == ["END"]
    assert (body["temperature"], body["top_p"]) == (0.3, 0.9)
    assert "seed" not in body
    body = translate(
        chat(Message(role="user", content="Hi"), max_completion_tokens=50, stop=["a", "b"])
    )
    assert body["max_tokens"] == 50
    assert body["stop_sequences"] == ["a", "b"]
    assert "stream" not in body


def test_messages_without_content_are_left_out() -> None:
    # Anthropic refuses a turn with empty content; the turns around it then merge.
    body = translate(
        chat(
            Message(role="user", content="Hi"),
            Message(role="assistant", content=""),
            Message(role="user", content=[]),
            Message(role="user", content="Still there?"),
            Message(role="assistant", content=""),
        )
    )
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "Still there?"}],
        }
    ]


@pytest.mark.parametrize(
    ("stop", "sequences"), [("", None), ([""], None), (["", "END"], ["END"]), ("\n", ["\n"])]
)
def test_empty_stop_sequences_are_not_sent(stop: str | list[str], sequences: Any) -> None:
    body = translate(chat(Message(role="user", content="Hi"), stop=stop))
    assert body.get("stop_sequences") == sequences


def test_only_anthropic_extras_are_forwarded() -> None:
    request = decode_request(
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "user": "u1",'
        b' "top_k": 3, "metadata": {"tag": "x"}, "logit_bias_v2": 1}'
    )
    body = translate(request)
    assert body["top_k"] == 3
    assert body["metadata"] == {"user_id": "u1", "tag": "x"}
    assert "logit_bias_v2" not in body


def test_tools_and_tool_choice() -> None:
    tools = [
        Tool(FunctionDef("get_weather", "Weather by city", {"type": "object", "properties": {}})),
        Tool(FunctionDef("now")),
    ]
    body = translate(chat(Message(role="user", content="Hi"), tools=tools, tool_choice="required"))
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather by city",
            "input_schema": {"type": "object", "properties": {}},
        },
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert body["tool_choice"] == {"type": "any"}
    choices = {
        "auto": {"type": "auto"},
        "none": {"type": "none"},
    }
    for choice, expected in choices.items():
        assert (
            translate(chat(Message(role="user", content="Hi"), tool_choice=choice))["tool_choice"]
            == expected
        )
    named = {"type": "function", "function": {"name": "now"}}
    body = translate(
        chat(
            Message(role="user", content="Hi"),
            tools=tools,
            tool_choice=named,
            parallel_tool_calls=False,
        )
    )
    assert body["tool_choice"] == {"type": "tool", "name": "now", "disable_parallel_tool_use": True}
    body = translate(
        chat(Message(role="user", content="Hi"), tools=tools, parallel_tool_calls=False)
    )
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    with pytest.raises(
        ValidationError, match="tool_choice must be `auto`, `required`, `none` or a function"
    ) as info:
        translate(chat(Message(role="user", content="Hi"), tool_choice="sometimes"))
    assert info.value.param == "tool_choice"


def test_tool_calls_and_results_become_blocks_and_same_role_turns_merge() -> None:
    body = translate(
        chat(
            Message(role="user", content="Weather in Paris and Rome?"),
            Message(
                role="assistant",
                content="Checking.",
                tool_calls=[
                    ToolCall("toolu_1", FunctionCall("get_weather", '{"city": "Paris"}')),
                    ToolCall("toolu_2", FunctionCall("get_weather", '{"city": "Rome"}')),
                ],
            ),
            Message(role="tool", tool_call_id="toolu_1", content="18C"),
            Message(role="tool", tool_call_id="toolu_2", content=[TextPart("21C")]),
            Message(role="user", content="Thanks, and tomorrow?"),
            Message(role="assistant", content="Let me see."),
            Message(role="assistant", content="Sunny."),
        )
    )
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_2",
                    "name": "get_weather",
                    "input": {"city": "Rome"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "21C"}],
                },
                {"type": "text", "text": "Thanks, and tomorrow?"},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me see."},
                {"type": "text", "text": "Sunny."},
            ],
        },
    ]


def test_images_become_image_blocks() -> None:
    content: list[Any] = [
        TextPart("What is this?"),
        ImagePart(ImageURL("data:image/png;base64,iVBORw0KGgo=")),
        ImagePart(ImageURL("https://example.com/cat.jpg")),
    ]
    body = translate(chat(Message(role="user", content=content)))
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    ("request_", "param", "message"),
    [
        (chat(Message(role="user", content="Hi"), n=2), "n", "answer with one choice only"),
        (
            chat(Message(role="user", content=[AudioPart({"data": "AAA", "format": "wav"})])),
            "messages[0].content[0]",
            "does not accept `input_audio` content parts",
        ),
        (
            chat(Message(role="user", content=[ImagePart(ImageURL("data:image/png,rawbytes"))])),
            "messages[0].content[0]",
            "an image data URL must be base64-encoded",
        ),
        (
            chat(
                Message(role="user", content="Hi"),
                Message(role="assistant", tool_calls=[ToolCall("t", FunctionCall("f", "{oops"))]),
            ),
            "messages[1].tool_calls[0].function.arguments",
            "tool call arguments must be a JSON object",
        ),
        (
            chat(Message(role="tool", content="18C")),
            "messages[0].tool_call_id",
            "a tool message needs the tool_call_id it answers",
        ),
    ],
)
def test_what_the_messages_api_cannot_do_is_a_validation_error(
    request_: Request, param: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)) as info:
        translate(request_)
    assert info.value.param == param


# -- streams -------------------------------------------------------------------------------


def tool_use_start(index: int, tool_id: str, name: str) -> Any:
    block = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
    return anthropic_event("content_block_start", index=index, content_block=block)


TOOL_STREAM: list[Any] = [
    anthropic_start(
        "msg_42",
        "claude-test-1",
        input_tokens=10,
        cache_creation_input_tokens=3,
        cache_read_input_tokens=20,
        output_tokens=1,
    ),
    anthropic_event("ping"),
    anthropic_event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
    anthropic_delta(0, "text_delta", text="Let me "),
    anthropic_delta(0, "text_delta", text="check."),
    anthropic_event("content_block_stop", index=0),
    tool_use_start(1, "toolu_A", "get_weather"),
    anthropic_delta(1, "input_json_delta", partial_json=""),
    anthropic_delta(1, "input_json_delta", partial_json='{"city": "Par'),
    anthropic_delta(1, "input_json_delta", partial_json='is"}'),
    anthropic_event("content_block_stop", index=1),
    tool_use_start(2, "toolu_B", "now"),
    anthropic_event("content_block_stop", index=2),
    anthropic_event("brand_new_event", whatever=[1, 2]),
    *anthropic_stop("tool_use", 31),
]


async def test_a_stream_with_text_and_tool_use_becomes_openai_chunks() -> None:
    upstream = Upstream(event_response(TOOL_STREAM, per_read=3))
    async with await make_provider(upstream).execute(make_request(), Context()) as stream:
        chunks = [chunk async for chunk in stream]
    deltas = [chunk.choices[0].delta if chunk.choices else None for chunk in chunks]
    assert all(chunk.id == "msg_42" and chunk.model == "claude-test-1" for chunk in chunks)
    # message_start carries nothing of the answer: its role comes with the first text.
    assert deltas[0] is not None
    assert (deltas[0].role, deltas[0].content) == ("assistant", "Let me ")
    assert [chunk.text for chunk in chunks[0:2]] == ["Let me ", "check."]
    calls = [d.tool_calls[0] for d in deltas if d is not None and d.tool_calls]
    assert [(c.index, c.id, c.function and c.function.name) for c in calls if c.id] == [
        (0, "toolu_A", "get_weather"),
        (1, "toolu_B", "now"),
    ]
    fragments = [(c.index, c.function.arguments) for c in calls if c.function and not c.id]
    assert fragments == [(0, '{"city": "Par'), (0, 'is"}'), (1, "{}")]
    assert chunks[-2].finish_reason == "tool_calls"
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (33, 31, 64)
    assert usage.prompt_tokens_details == {"cached_tokens": 20}
    assert upstream.stream.closed


async def test_a_collected_tool_stream_has_whole_tool_calls() -> None:
    upstream = Upstream(event_response(TOOL_STREAM))
    response = await (await make_provider(upstream).execute(make_request(), Context())).collect()
    message = response.choices[0].message
    assert message.content == "Let me check."
    assert message.tool_calls is not None
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls] == [
        ("toolu_A", "get_weather", '{"city": "Paris"}'),
        ("toolu_B", "now", "{}"),
    ]


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("something_new", "stop"),
    ],
)
async def test_stop_reasons_map_to_finish_reasons(stop_reason: str, finish: str) -> None:
    events = [*anthropic_text_events("x", finish=False), *anthropic_stop(stop_reason, 1)]
    upstream = Upstream(event_response(events))
    response = await (await make_provider(upstream).execute(make_request(), Context())).collect()
    assert response.choices[0].finish_reason == finish


def error_event(kind: str, message: str) -> tuple[str, dict[str, Any]]:
    return anthropic_event("error", error={"type": kind, "message": message})


async def test_an_error_event_before_the_first_chunk_is_the_matching_provider_error() -> None:
    # As Anthropic sends it: the message opens, then the error comes before any content.
    events = [
        anthropic_start(),
        anthropic_event("ping"),
        error_event("overloaded_error", "Overloaded"),
    ]
    upstream = Upstream(event_response(events))
    stream = await make_provider(upstream).execute(make_request(), Context())
    with pytest.raises(ProviderError, match=r"^Overloaded$") as info:
        await stream.__anext__()
    assert not isinstance(info.value, StreamError)
    assert (info.value.upstream_status, info.value.status, info.value.retryable) == (529, 502, True)
    assert info.value.code == "overloaded_error"
    assert upstream.stream.closed


async def test_an_error_event_mid_stream_is_a_stream_error() -> None:
    events = [*anthropic_text_events("partial", finish=False), error_event("api_error", "Internal")]
    upstream = Upstream(event_response(events))
    stream = await make_provider(upstream).execute(make_request(), Context())
    texts = []
    with pytest.raises(StreamError, match="Internal") as info:
        async for chunk in stream:
            texts.append(chunk.text)
    assert texts == ["partial"]
    assert not info.value.retryable


async def test_a_stream_without_event_names_is_read_from_the_type_field() -> None:
    events = [payload for _, payload in anthropic_text_events("a", "b")]
    upstream = Upstream(event_response(events))
    response = await (await make_provider(upstream).execute(make_request(), Context())).collect()
    assert response.text == "ab"
    assert response.choices[0].finish_reason == "stop"


# -- whole answers -------------------------------------------------------------------------


async def test_a_whole_answer_becomes_a_chat_completion() -> None:
    message = {
        "id": "msg_7",
        "type": "message",
        "role": "assistant",
        "model": "claude-test-1",
        "content": [
            {"type": "text", "text": "Sure. "},
            {"type": "thinking", "thinking": "hmm", "signature": "x"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Oslo"}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 12, "output_tokens": 8},
    }
    upstream = Upstream(json_response(message))
    stream = await make_provider(upstream).execute(make_request(stream=False), Context())
    response = await stream.collect()
    assert "stream" not in upstream.body
    assert (response.id, response.model) == ("msg_7", "claude-test-1")
    choice = response.choices[0]
    assert choice.message.content == "Sure. Checking."
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert (call.id, call.function.name, call.function.arguments) == (
        "toolu_9",
        "get_weather",
        '{"city":"Oslo"}',
    )
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (12, 8)


async def test_a_whole_answer_with_only_tool_use_has_no_text() -> None:
    message = {
        "id": "msg_8",
        "model": "claude-test-1",
        "content": [{"type": "tool_use", "id": "t", "name": "now", "input": {}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }
    upstream = Upstream(json_response(message))
    response = await (
        await make_provider(upstream).execute(make_request(stream=False), Context())
    ).collect()
    assert response.choices[0].message.content is None
    assert response.choices[0].message.tool_calls is not None
    assert response.choices[0].message.tool_calls[0].function.arguments == "{}"


async def test_validate_lists_the_models() -> None:
    upstream = Upstream(json_response({"data": []}))
    await make_provider(upstream).validate()
    assert str(upstream.request.url) == "https://upstream.test/v1/models"
    assert upstream.request.headers["x-api-key"] == KEY
