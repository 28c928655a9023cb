"""CompletionsProvider: chat rendered into a prompt; text events turned into chunks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline import (
    Context,
    FunctionDef,
    Message,
    Request,
    StreamError,
    Tool,
    ValidationError,
    estimate_tokens,
)
from providers import CompletionsProvider, ServerSentEvent
from providers._completions import _CompletionEvents, render_prompt

from ..conftest import make_request
from .helpers import (
    KEY,
    Upstream,
    completions_text_events,
    event_response,
    held_while_feeding,
    json_response,
)
from .helpers import make_provider as _make_provider

CONVERSATION = [
    Message(role="system", content="You are terse."),
    Message(role="user", content="Hello"),
    Message(role="assistant", content="Hi."),
    Message(role="tool", content="42", tool_call_id="t1"),
    Message(role="developer", content="Stay polite."),
    Message(role="user", content="How are you?"),
]


def make_provider(upstream: Upstream, **kwargs: Any) -> CompletionsProvider:
    provider = _make_provider("completions", upstream, **kwargs)
    assert isinstance(provider, CompletionsProvider)
    return provider


def test_the_prompt_template() -> None:
    assert render_prompt(CONVERSATION) == (
        "System: You are terse.\n"
        "User: Hello\n"
        "Assistant: Hi.\n"
        "Tool: 42\n"
        "System: Stay polite.\n"
        "User: How are you?\n"
        "Assistant:"
    )


async def test_a_stream_request_carries_the_prompt_and_parameters() -> None:
    upstream = Upstream(event_response(completions_text_events("Fine", ", thanks.")))
    request = Request(
        model="text-1", messages=CONVERSATION, stream=True, max_tokens=20, temperature=0.5
    )
    await (await make_provider(upstream).execute(request, Context())).collect()
    assert str(upstream.request.url) == "https://upstream.test/v1/completions"
    assert upstream.request.headers["authorization"] == f"Bearer {KEY}"
    assert upstream.body == {
        "prompt": render_prompt(CONVERSATION),
        "max_tokens": 20,
        "temperature": 0.5,
        "stream": True,
    }


async def test_unset_parameters_are_sent_as_null() -> None:
    upstream = Upstream(json_response({"text": "ok", "finish_reason": "stop"}))
    await (
        await make_provider(upstream).execute(make_request("hi", stream=False), Context())
    ).collect()
    assert upstream.body == {
        "prompt": "User: hi\nAssistant:",
        "max_tokens": None,
        "temperature": None,
        "stream": False,
    }


async def test_streamed_text_events_become_chunks_then_usage() -> None:
    events = [
        {"text": "Fine", "finish_reason": None},
        {"text": "", "finish_reason": None},
        {"text": ", thanks.", "finish_reason": None},
        {"text": "", "finish_reason": "length"},
        "[DONE]",
    ]
    upstream = Upstream(event_response(events, per_read=2))
    stream = await make_provider(upstream).execute(make_request("a" * 20), Context())
    chunks = [chunk async for chunk in stream]
    assert [chunk.text for chunk in chunks] == ["Fine", ", thanks.", "", ""]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[1].choices[0].delta.role is None
    assert chunks[2].finish_reason == "length"
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].model == "mock-1"
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage is not None
    # Estimated: the prompt "User: aaaa...\nAssistant:" is 37 characters, the answer 13.
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (10, 4, 14)


async def test_the_last_event_may_carry_text_finish_and_usage_together() -> None:
    events = [
        {"text": "Hel", "finish_reason": None},
        {
            "text": "lo",
            "finish_reason": "stop",
            "usage": {"prompt_tokens": 7, "completion_tokens": 2},
        },
        "[DONE]",
    ]
    upstream = Upstream(event_response(events))
    response = await (await make_provider(upstream).execute(make_request(), Context())).collect()
    assert response.text == "Hello"
    assert response.choices[0].finish_reason == "stop"
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (7, 2)


def test_a_long_stream_is_not_kept_to_estimate_its_usage() -> None:
    # 5 MB of answer pass through; an estimate needs only their length.
    piece = "é" * 10_000
    translator = _CompletionEvents(make_request(), "prompt")
    event = {"text": piece, "finish_reason": None}
    events = (ServerSentEvent(json.dumps(event)) for _ in range(500))
    assert held_while_feeding(translator, events) < 1_000_000
    translator.feed(ServerSentEvent(json.dumps({"text": "", "finish_reason": "stop"})))
    usage = translator.finish()
    assert usage is not None
    assert usage.usage is not None
    assert usage.usage.completion_tokens == estimate_tokens(piece * 500)


async def test_a_whole_answer_with_upstream_usage() -> None:
    answer = {
        "text": "Fine.",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 30, "completion_tokens": 2},
    }
    upstream = Upstream(json_response(answer))
    request = Request(model="text-1", messages=CONVERSATION)
    response = await (await make_provider(upstream).execute(request, Context())).collect()
    assert upstream.request.headers["accept"] == "application/json"
    assert response.text == "Fine."
    assert response.model == "text-1"
    assert response.choices[0].finish_reason == "stop"
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (30, 2)


async def test_a_whole_answer_without_usage_is_estimated() -> None:
    upstream = Upstream(json_response({"text": "12345678", "finish_reason": "length"}))
    response = await (
        await make_provider(upstream).execute(make_request("hi", stream=False), Context())
    ).collect()
    assert response.choices[0].finish_reason == "length"
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (5, 2)


async def test_an_error_object_instead_of_an_answer_keeps_its_message() -> None:
    upstream = Upstream(json_response({"error": {"message": "model not loaded"}}))
    with pytest.raises(StreamError, match="model not loaded") as info:
        await make_provider(upstream).execute(make_request(stream=False), Context())
    assert info.value.retryable


async def test_tools_are_refused() -> None:
    upstream = Upstream(json_response({}))
    request = make_request(tools=[Tool(FunctionDef("f"))])
    with pytest.raises(ValidationError, match="the completions API has no tools") as info:
        await make_provider(upstream).execute(request, Context())
    assert info.value.param == "tools"
    assert upstream.requests == []


async def test_validate_calls_the_validate_endpoint() -> None:
    upstream = Upstream(json_response({"ok": True}))
    await make_provider(upstream).validate()
    assert upstream.request.method == "GET"
    assert str(upstream.request.url) == "https://upstream.test/v1/validate"
    assert upstream.request.headers["authorization"] == f"Bearer {KEY}"
