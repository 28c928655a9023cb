"""The Anthropic Messages door, spoken by the official `anthropic` SDK.

`claude` is an Anthropic upstream (the request and its events pass through natively),
`gpt` an OpenAI-compatible one and `mock` the mock provider (both translated).
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pytest

from benchmarks.fake_upstream import FakeConfig, FakeUpstream
from pipeline import (
    Chunk,
    ChunkChoice,
    Delta,
    FunctionCallDelta,
    Pipeline,
    ProviderError,
    ResponseStream,
    ToolCallDelta,
    UnavailableError,
    Usage,
)
from providers import MockProvider

from ..helpers import parse_sse
from .conftest import Start, in_thread

USER: list[Any] = [{"role": "user", "content": "Hello"}]
WEATHER: list[Any] = [
    {
        "name": "get_weather",
        "description": "Weather by city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]


def client(url: str, key: str = "sk-any") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=20.0)


@pytest.mark.parametrize("model", ["claude", "gpt", "mock"])
async def test_messages_create_answers_in_anthropics_shape(doors: str, model: str) -> None:
    sdk = client(doors)

    message = await in_thread(
        lambda: sdk.messages.create(model=model, max_tokens=100, messages=USER)
    )

    assert message.type == "message"
    assert message.role == "assistant"
    assert message.content[0].type == "text"
    assert message.content[0].text
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens > 0


@pytest.mark.parametrize("model", ["claude", "gpt", "mock"])
async def test_the_stream_accumulator_rebuilds_the_same_message(doors: str, model: str) -> None:
    sdk = client(doors)
    whole = await in_thread(lambda: sdk.messages.create(model=model, max_tokens=100, messages=USER))

    def stream() -> tuple[Any, list[str]]:
        with sdk.messages.stream(model=model, max_tokens=100, messages=USER) as events:
            kinds: list[str] = [event.type for event in events]
            return events.get_final_message(), kinds

    final, kinds = await in_thread(stream)

    assert [block.model_dump() for block in final.content] == [
        block.model_dump() for block in whole.content
    ]
    assert final.stop_reason == whole.stop_reason == "end_turn"
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens > 0
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    assert "message_delta" in kinds


async def test_native_passthrough_sends_the_body_as_sent_with_the_upstream_model(
    doors: str, fake: FakeUpstream
) -> None:
    sdk = client(doors)
    system: Any = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]

    await in_thread(
        lambda: sdk.messages.create(
            model="claude",
            max_tokens=50,
            system=system,
            messages=USER,
            metadata={"user_id": "u-1"},
            extra_body={"brand_new_field": {"nested": [1, 2]}},
        )
    )

    body = fake.requests[-1].body
    assert fake.requests[-1].path == "/v1/messages"
    assert body["model"] == "fake-claude"
    assert body["system"] == system
    assert body["metadata"] == {"user_id": "u-1"}
    assert body["brand_new_field"] == {"nested": [1, 2]}


async def test_native_events_pass_through_unchanged(
    doors: str, fake: FakeUpstream, http: httpx.AsyncClient
) -> None:
    body = {"model": "claude", "max_tokens": 50, "messages": USER, "stream": True}

    response = await http.post(f"{doors}/v1/messages", json=body)

    events = parse_sse(response.text)
    # The fake's ping comes after the first block starts: only a native stream has it there.
    assert [name for name, _ in events][:3] == ["message_start", "content_block_start", "ping"]
    start = json.loads(events[0][1])
    assert start["message"]["id"] == "msg_fake"


@pytest.mark.parametrize("model", ["claude", "gpt"])
async def test_a_tool_use_round_trip(doors: str, fake: FakeUpstream, model: str) -> None:
    fake.config = FakeConfig(tool_calls=True)
    sdk = client(doors)
    first = await in_thread(
        lambda: sdk.messages.create(model=model, max_tokens=100, messages=USER, tools=WEATHER)
    )
    assert first.stop_reason == "tool_use"
    use = first.content[-1]
    assert use.type == "tool_use"
    assert use.name == "get_weather"
    assert use.input == {"city": "fake"}

    history: list[Any] = [
        *USER,
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny"}],
        },
    ]
    fake.config = FakeConfig()
    second = await in_thread(
        lambda: sdk.messages.create(model=model, max_tokens=100, messages=history, tools=WEATHER)
    )
    assert second.stop_reason == "end_turn"
    sent = fake.requests[-1].body
    if model == "claude":
        assert sent["messages"] == history  # as the client sent it
    else:
        # Translated for the OpenAI upstream: the call and its result in chat's shape.
        assert sent["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"
        tool_message = {"role": "tool", "content": "Sunny", "tool_call_id": use.id}
        assert sent["messages"][2] == tool_message


@pytest.mark.parametrize("model", ["claude", "gpt"])
async def test_a_streamed_text_then_tool_use_is_framed_as_claude_code_expects(
    start_server: Start, http: httpx.AsyncClient, model: str, fake: FakeUpstream
) -> None:
    # The mock answers text and then a tool call in one stream, through the translation.
    from pipeline import FunctionCall

    provider = MockProvider("Let me look.", chunks=2)
    tool = MockProvider(tool_calls=[FunctionCall("get_weather", '{"city": "Paris"}')], chunks=3)

    class TextThenTool(MockProvider):
        async def execute(self, request: Any, ctx: Any) -> Any:
            text = await provider.execute(request, ctx)
            calls = await tool.execute(request, ctx)
            chunks = [c async for c in text if c.choices and not c.choices[0].finish_reason]
            chunks += [c async for c in calls]
            from pipeline import ResponseStream

            return ResponseStream.from_chunks(chunks)

    url = await start_server(Pipeline(TextThenTool()))
    body = {"model": model, "max_tokens": 50, "messages": USER, "stream": True, "tools": WEATHER}

    response = await http.post(f"{url}/v1/messages", json=body)

    events = [(name, json.loads(data)) for name, data in parse_sse(response.text)]
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    starts = [data for name, data in events if name == "content_block_start"]
    stops = [data["index"] for name, data in events if name == "content_block_stop"]
    assert [(s["index"], s["content_block"]["type"]) for s in starts] == [
        (0, "text"),
        (1, "tool_use"),
    ]
    assert stops == [0, 1]
    # Every delta belongs to the block open at the time.
    open_block = None
    for name, data in events:
        if name == "content_block_start":
            open_block = data["index"]
        elif name == "content_block_delta":
            assert data["index"] == open_block
            kind = "text_delta" if open_block == 0 else "input_json_delta"
            assert data["delta"]["type"] == kind
        elif name == "content_block_stop":
            open_block = None
    arguments = "".join(
        data["delta"]["partial_json"]
        for name, data in events
        if name == "content_block_delta" and data["index"] == 1
    )
    assert json.loads(arguments) == {"city": "Paris"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert events[-2][1]["usage"]["output_tokens"] > 0


def _piece(
    *, text: str | None = None, call: int | None = None, name: str | None = None, args: str = ""
) -> Chunk:
    """One chat chunk: a piece of text, or a piece of tool call `call` (named when it starts)."""
    calls = None
    if call is not None:
        start = name is not None
        calls = [
            ToolCallDelta(
                call,
                id=f"call_{call}" if start else None,
                type="function" if start else None,
                function=FunctionCallDelta(name=name, arguments=args),
            )
        ]
    return Chunk("c1", 0, "m", [ChunkChoice(0, Delta(content=text, tool_calls=calls))])


async def test_interleaved_tool_call_pieces_each_go_to_their_own_block(
    start_server: Start, http: httpx.AsyncClient
) -> None:
    # Some chat upstreams send a piece of an earlier tool call after a later one started.
    chunks = [
        _piece(text="Let me check."),
        _piece(call=0, name="get_weather", args='{"city": '),
        _piece(call=1, name="get_time", args='{"tz": '),
        _piece(call=0, args='"Paris"}'),
        _piece(text=" One moment."),
        _piece(call=1, args='"CET"}'),
        Chunk("c1", 0, "m", [ChunkChoice(0, Delta(), "tool_calls")], Usage(5, 9, 14)),
    ]

    class Interleaving(MockProvider):
        async def execute(self, request: Any, ctx: Any) -> ResponseStream:
            return ResponseStream.from_chunks(chunks)

    url = await start_server(Pipeline(Interleaving()))
    body = {"model": "m", "max_tokens": 50, "messages": USER, "stream": True, "tools": WEATHER}

    response = await http.post(f"{url}/v1/messages", json=body)

    events = [(name, json.loads(data)) for name, data in parse_sse(response.text)]
    # Blocks never overlap: each is started, gets its deltas under its own index, and is
    # stopped once, before the next one starts.
    blocks: list[dict[str, Any]] = []
    open_block = None
    for name, data in events:
        if name == "content_block_start":
            assert open_block is None
            assert data["index"] == len(blocks)
            open_block = data["index"]
            blocks.append({**data["content_block"], "pieces": ""})
        elif name == "content_block_delta":
            assert data["index"] == open_block
            delta = data["delta"]
            blocks[open_block]["pieces"] += delta.get("text") or delta["partial_json"]
        elif name == "content_block_stop":
            assert data["index"] == open_block
            open_block = None
    assert open_block is None
    assert [(b["type"], b.get("id"), b.get("name"), b["pieces"]) for b in blocks] == [
        ("text", None, None, "Let me check."),
        ("tool_use", "call_0", "get_weather", '{"city": "Paris"}'),
        ("tool_use", "call_1", "get_time", '{"tz": "CET"}'),
        ("text", None, None, " One moment."),
    ]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert [name for name, _ in events][-2:] == ["message_delta", "message_stop"]

    # The SDK's accumulator rebuilds the same message from these events.
    def stream() -> anthropic.types.Message:
        with client(url).messages.stream(model="m", max_tokens=50, messages=USER) as events:
            return events.get_final_message()

    final = await in_thread(stream)
    uses = [(b.name, b.input) for b in final.content if b.type == "tool_use"]
    assert uses == [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "CET"})]


async def test_thinking_from_an_openai_compatible_upstream_becomes_thinking_blocks(
    start_server: Start,
) -> None:
    from pipeline import ChatCompletion, ResponseChoice, ResponseMessage, ResponseStream, Usage

    class Reasoner(MockProvider):
        async def execute(self, request: Any, ctx: Any) -> ResponseStream:
            message = ResponseMessage(content="42", reasoning_content="Let me think.")
            answer = ChatCompletion(
                "c1", 0, request.model, [ResponseChoice(0, message, "stop")], Usage(3, 4, 7)
            )
            return ResponseStream.from_response(answer)

    url = await start_server(Pipeline(Reasoner()))
    sdk = client(url)

    def stream() -> anthropic.types.Message:
        with sdk.messages.stream(model="r", max_tokens=100, messages=USER) as events:
            return events.get_final_message()

    final = await in_thread(stream)
    whole = await in_thread(lambda: sdk.messages.create(model="r", max_tokens=100, messages=USER))

    for message in (final, whole):
        assert [block.type for block in message.content] == ["thinking", "text"]
        assert message.content[0].thinking == "Let me think."


async def test_thinking_blocks_in_history_reach_an_openai_upstream_as_reasoning_content(
    doors: str, fake: FakeUpstream
) -> None:
    history: list[Any] = [
        *USER,
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Hmm.", "signature": "sig"},
                {"type": "text", "text": "Hi!"},
            ],
        },
        {"role": "user", "content": "And?"},
    ]
    await in_thread(
        lambda: client(doors).messages.create(
            model="gpt",
            max_tokens=100,
            messages=history,
            thinking={"type": "enabled", "budget_tokens": 5000},
        )
    )
    sent = fake.requests[-1].body
    assert sent["messages"][1] == {
        "role": "assistant",
        "content": "Hi!",
        "reasoning_content": "Hmm.",
    }
    assert sent["reasoning_effort"] == "medium"


async def test_the_key_may_come_in_x_api_key_or_bearer(
    start_server: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    from middlewares import Auth
    from pipeline import ApiKey

    url = await start_server(Pipeline(MockProvider(), [Auth({"sk-good": ApiKey("team")})]))

    by_header = await in_thread(
        lambda: client(url, "sk-good").messages.create(model="m", max_tokens=10, messages=USER)
    )
    bearer = anthropic.Anthropic(base_url=url, auth_token="sk-good", max_retries=0)
    by_bearer = await in_thread(
        lambda: bearer.messages.create(model="m", max_tokens=10, messages=USER)
    )
    assert by_header.content
    assert by_bearer.content
    with pytest.raises(anthropic.AuthenticationError, match="Invalid API key"):
        await in_thread(
            lambda: client(url, "sk-bad").messages.create(model="m", max_tokens=10, messages=USER)
        )


@pytest.mark.parametrize(
    ("error", "exception", "status", "kind"),
    [
        (UnavailableError("busy"), anthropic.InternalServerError, 529, "overloaded_error"),
        (
            ProviderError("slow down", upstream_status=429),
            anthropic.RateLimitError,
            429,
            "rate_limit_error",
        ),
        (
            ProviderError("overloaded", upstream_status=529),
            anthropic.InternalServerError,
            529,
            "overloaded_error",
        ),
    ],
)
async def test_errors_are_anthropics_shape_and_status(
    start_server: Start,
    http: httpx.AsyncClient,
    error: Exception,
    exception: type[Exception],
    status: int,
    kind: str,
) -> None:
    url = await start_server(Pipeline(MockProvider(error=error)))  # type: ignore[arg-type]

    response = await http.post(
        f"{url}/v1/messages", json={"model": "m", "max_tokens": 5, "messages": USER}
    )

    assert response.status_code == status
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == kind
    with pytest.raises(exception):
        await in_thread(lambda: client(url).messages.create(model="m", max_tokens=5, messages=USER))


async def test_a_malformed_body_is_an_invalid_request_naming_the_field(
    doors: str, http: httpx.AsyncClient
) -> None:
    response = await http.post(f"{doors}/v1/messages", json={"model": "claude", "messages": USER})

    assert response.status_code == 400
    assert response.json() == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "Object missing required field `max_tokens`",
        },
    }


async def test_a_server_tool_is_refused_only_by_a_provider_that_must_translate(
    doors: str, fake: FakeUpstream
) -> None:
    tools: Any = [{"type": "web_search_20250305", "name": "web_search"}]
    sdk = client(doors)

    await in_thread(
        lambda: sdk.messages.create(model="claude", max_tokens=10, messages=USER, tools=tools)
    )
    assert fake.requests[-1].body["tools"] == tools
    with pytest.raises(anthropic.BadRequestError, match=r"`tools\[0\]` cannot be translated"):
        await in_thread(
            lambda: sdk.messages.create(model="gpt", max_tokens=10, messages=USER, tools=tools)
        )


async def test_count_tokens_asks_an_anthropic_upstream_and_estimates_for_the_rest(
    doors: str, fake: FakeUpstream
) -> None:
    sdk = client(doors)

    counted = await in_thread(lambda: sdk.messages.count_tokens(model="claude", messages=USER))
    estimated = await in_thread(lambda: sdk.messages.count_tokens(model="gpt", messages=USER))

    assert fake.requests[-1].path == "/v1/messages/count_tokens"
    assert fake.requests[-1].body == {"model": "fake-claude", "messages": USER}
    assert counted.input_tokens == 2  # the fake's count: "Hello" is 5 characters
    assert estimated.input_tokens == 6  # our estimate: 4 per message, "Hello" is 2
