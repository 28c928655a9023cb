"""The fake upstream speaks Anthropic Messages: whole answers, event streams, errors."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec

from benchmarks.fake_upstream import FakeUpstream, fake_text

from ..helpers import parse_sse
from .bodies import MESSAGES, messages_body

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
# The events before the first delta of every stream.
HEAD = ["message_start", "content_block_start", "ping"]


def decode_events(body: str) -> list[tuple[str | None, dict[str, Any]]]:
    """Each named event with its decoded data; the name must equal the data's `type`."""
    events = [(name, msgspec.json.decode(data)) for name, data in parse_sse(body)]
    for name, data in events:
        assert name == data["type"]
    return events


async def test_whole_answer_is_a_message_with_usage(fake_upstream: FakeUpstream) -> None:
    body = messages_body("hi", system="be brief")
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        response = await client.post(MESSAGES, json=body)
    assert response.status_code == 200
    assert response.json() == {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": "fake-claude",
        "content": [{"type": "text", "text": fake_text(200)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        # "be brief" and "hi" are ten characters: three tokens at four characters each.
        "usage": {"input_tokens": 3, "output_tokens": 50},
    }


async def test_stream_events_come_in_anthropic_order(fake_upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        response = await client.post(
            MESSAGES, json=messages_body(stream=True), headers={"x-fake-chunks": "5"}
        )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = decode_events(response.text)
    names = [name for name, _ in events]
    assert names == [
        *HEAD,
        *["content_block_delta"] * 5,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["content"] == []
    assert start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == 2
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert {delta["type"] for delta in deltas} == {"text_delta"}
    assert "".join(delta["text"] for delta in deltas) == fake_text(200)
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 50},
    }


async def test_max_tokens_stops_with_reason_max_tokens(fake_upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        response = await client.post(MESSAGES, json=messages_body(max_tokens=3))
    assert response.json()["stop_reason"] == "max_tokens"
    assert response.json()["content"][0]["text"] == fake_text(12)


async def test_a_tool_use_streams_input_json_deltas(fake_upstream: FakeUpstream) -> None:
    body = messages_body(stream=True, tools=[WEATHER_TOOL])
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        response = await client.post(MESSAGES, json=body, headers={"x-fake-tool-calls": "true"})
    events = decode_events(response.text)
    assert events[1][1]["content_block"] == {
        "type": "tool_use",
        "id": "toolu_fake_0",
        "name": "get_weather",
        "input": {},
    }
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert {delta["type"] for delta in deltas} == {"input_json_delta"}
    assert msgspec.json.decode("".join(d["partial_json"] for d in deltas)) == {"city": "fake"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_a_whole_tool_use_carries_its_input(fake_upstream: FakeUpstream) -> None:
    body = messages_body(tools=[WEATHER_TOOL])
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        response = await client.post(MESSAGES, json=body, headers={"x-fake-tool-calls": "true"})
    message = response.json()
    assert message["content"] == [
        {"type": "tool_use", "id": "toolu_fake_0", "name": "get_weather", "input": {"city": "fake"}}
    ]
    assert message["stop_reason"] == "tool_use"


async def test_errors_have_anthropic_shape(fake_upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        overloaded = await client.post(
            MESSAGES, json=messages_body(), headers={"x-fake-status": "529"}
        )
        no_max_tokens = await client.post(
            MESSAGES, json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        )
    assert overloaded.status_code == 529
    assert overloaded.json()["type"] == "error"
    assert overloaded.json()["error"]["type"] == "overloaded_error"
    assert no_max_tokens.status_code == 400
    error = no_max_tokens.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "max_tokens" in error["message"]


async def test_a_required_key_needs_a_key_header_and_a_version(fake_upstream: FakeUpstream) -> None:
    knob = {"x-fake-api-key": "sk-ant-test"}
    version = {"anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        without_key = await client.post(MESSAGES, json=messages_body(), headers={**knob, **version})
        bearer = await client.post(
            MESSAGES,
            json=messages_body(),
            headers={**knob, **version, "authorization": "Bearer sk-ant-test"},
        )
        without_version = await client.post(
            MESSAGES, json=messages_body(), headers={**knob, "x-api-key": "sk-ant-test"}
        )
        right = await client.post(
            MESSAGES, json=messages_body(), headers={**knob, **version, "x-api-key": "sk-ant-test"}
        )
        unchecked = await client.post(MESSAGES, json=messages_body())
    assert without_key.status_code == 401
    assert without_key.json()["error"]["type"] == "authentication_error"
    # Newer Anthropic SDKs send the key as a bearer token.
    assert bearer.status_code == 200
    assert without_version.status_code == 400
    assert "anthropic-version" in without_version.json()["error"]["message"]
    assert (right.status_code, unchecked.status_code) == (200, 200)


async def test_models_take_anthropics_key_header(fake_upstream: FakeUpstream) -> None:
    knob = {"x-fake-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        right = await client.get("/v1/models", headers={**knob, "x-api-key": "sk-ant-test"})
        wrong = await client.get("/v1/models", headers={**knob, "x-api-key": "sk-ant-wrong"})
    assert right.status_code == 200
    assert "fake-claude" in [model["id"] for model in right.json()["data"]]
    assert wrong.status_code == 401
    assert wrong.json()["error"]["type"] == "authentication_error"


async def test_an_in_stream_error_event_ends_the_stream(fake_upstream: FakeUpstream) -> None:
    headers = {"x-fake-stream-error-after": "2"}
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        response = await client.post(MESSAGES, json=messages_body(stream=True), headers=headers)
    events = decode_events(response.text)
    names = [name for name, _ in events]
    assert names == [*HEAD, "content_block_delta", "content_block_delta", "error"]
    assert events[-1][1] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
