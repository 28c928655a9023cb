"""The embeddings and Responses doors, spoken by the official `openai` SDK.

`gpt` is an OpenAI upstream that serves the Responses API (passed through), `vllm` one that
serves only chat (translated), `mock` the mock provider, `claude` an Anthropic upstream.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from benchmarks.fake_upstream import FakeConfig, FakeUpstream
from llm_proxy import build_stack, parse_config
from providers._mock import mock_vector

from ..helpers import parse_sse
from .conftest import UPSTREAM_KEY, Start, doors_config, in_thread

SDK = Callable[[str], openai.OpenAI]
WEATHER: list[Any] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather by city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]


# -- embeddings -----------------------------------------------------------------------------


async def test_embeddings_of_the_mock_are_deterministic(doors: str, sdk: SDK) -> None:
    client = sdk(doors)

    # The SDK asks for base64 unless told otherwise, and decodes it.
    first = await in_thread(lambda: client.embeddings.create(model="mock", input=["a", "b"]))
    again = await in_thread(lambda: client.embeddings.create(model="mock", input="a"))
    floats = await in_thread(
        lambda: client.embeddings.create(
            model="mock", input=[[1, 2, 3]], encoding_format="float", dimensions=4
        )
    )

    assert [item.index for item in first.data] == [0, 1]
    assert first.data[0].embedding == pytest.approx(mock_vector("a"))
    assert first.data[1].embedding == pytest.approx(mock_vector("b"))
    assert again.data[0].embedding == first.data[0].embedding
    assert floats.data[0].embedding == mock_vector([1, 2, 3], 4)
    assert first.usage.prompt_tokens > 0


async def test_embeddings_pass_through_to_an_openai_upstream_unchanged(
    doors: str, fake: FakeUpstream, http: httpx.AsyncClient
) -> None:
    body = {
        "model": "gpt",
        "input": ["one", "two"],
        "encoding_format": "base64",
        "dimensions": 3,
        "user": "u1",
        "unknown": {"kept": True},
    }

    response = await http.post(f"{doors}/v1/embeddings", json=body)

    assert fake.requests[-1].path == "/v1/embeddings"
    assert fake.requests[-1].body == {**body, "model": "fake-gpt"}
    data = response.json()["data"]
    assert len(data) == 2
    packed = base64.b64decode(data[0]["embedding"])  # as the upstream encoded it
    assert len(struct.unpack("<3f", packed)) == 3
    assert response.json()["usage"]["prompt_tokens"] > 0


async def test_the_sdk_reads_an_upstreams_embeddings(doors: str, sdk: SDK) -> None:
    result = await in_thread(lambda: sdk(doors).embeddings.create(model="gpt", input="hello"))
    assert len(result.data[0].embedding) == 8
    assert result.model == "fake-gpt"


async def test_embeddings_from_a_provider_without_them_are_refused_by_name(
    doors: str, sdk: SDK
) -> None:
    with pytest.raises(openai.BadRequestError, match="`an`, which does not serve embeddings"):
        await in_thread(lambda: sdk(doors).embeddings.create(model="claude", input="x"))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "mock", "input": []}, "input"),
        ({"model": "mock", "input": ["a", None]}, "input[1]"),
        ({"model": "mock", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "mock"}, "input"),
    ],
)
async def test_bad_embeddings_requests_name_the_field(
    doors: str, http: httpx.AsyncClient, body: dict[str, Any], param: str
) -> None:
    response = await http.post(f"{doors}/v1/embeddings", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


async def test_embedding_input_counts_against_token_limits(
    start_server: Start, fake: FakeUpstream, http: httpx.AsyncClient, monkeypatch: Any
) -> None:
    monkeypatch.setenv("TEST_UPSTREAM_KEY", UPSTREAM_KEY)
    stack = build_stack(
        parse_config(doors_config(fake.url, "[ratelimit]\ntokens_per_minute = 100\n"))
    )
    url = await start_server(stack.pipeline, models_for=stack.models_for)

    response = await http.post(
        f"{url}/v1/embeddings", json={"model": "mock", "input": ["x" * 1000]}
    )

    assert response.status_code == 429
    assert "about 250 tokens" in response.json()["error"]["message"]


# -- responses ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt", "vllm", "mock", "claude"])
async def test_responses_create_and_stream_agree(doors: str, sdk: SDK, model: str) -> None:
    client = sdk(doors)

    whole = await in_thread(
        lambda: client.responses.create(model=model, input="Hello", instructions="Be brief.")
    )

    def stream() -> tuple[Any, list[str]]:
        with client.responses.stream(
            model=model, input="Hello", instructions="Be brief."
        ) as events:
            kinds: list[str] = [event.type for event in events]
            return events.get_final_response(), kinds

    final, kinds = await in_thread(stream)

    assert whole.status == final.status == "completed"
    assert whole.output_text
    assert final.output_text == whole.output_text
    assert final.usage is not None
    assert final.usage.output_tokens > 0
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for kind in (
        "response.output_item.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.output_item.done",
    ):
        assert kind in kinds


async def test_responses_pass_through_to_an_upstream_that_serves_them(
    doors: str, fake: FakeUpstream, http: httpx.AsyncClient
) -> None:
    body = {"model": "gpt", "input": "Hello", "stream": True, "novel": [1]}

    response = await http.post(f"{doors}/v1/responses", json=body)

    assert fake.requests[-1].path == "/v1/responses"
    assert fake.requests[-1].body == {**body, "model": "fake-gpt"}
    deltas = [
        data for name, data in parse_sse(response.text) if name == "response.output_text.delta"
    ]
    assert deltas
    assert all('"fake_marker":"kept"' in data for data in deltas)


async def test_responses_are_translated_to_chat_for_the_rest(
    doors: str, fake: FakeUpstream, sdk: SDK
) -> None:
    class Answer(BaseModel):
        city: str

    await in_thread(
        lambda: sdk(doors).responses.create(
            model="vllm",
            input=[{"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]}],
            instructions="Be brief.",
            max_output_tokens=50,
            temperature=0.5,
            text={
                "format": {
                    "type": "json_schema",
                    "name": "answer",
                    "schema": Answer.model_json_schema(),
                    "strict": True,
                }
            },
        )
    )

    sent = fake.requests[-1].body
    assert fake.requests[-1].path == "/v1/chat/completions"
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
    ]
    assert sent["max_completion_tokens"] == 50
    assert sent["temperature"] == 0.5
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": Answer.model_json_schema(), "strict": True},
    }


@pytest.mark.parametrize("model", ["gpt", "vllm"])
async def test_a_function_call_round_trip(
    doors: str, fake: FakeUpstream, sdk: SDK, model: str
) -> None:
    fake.config = FakeConfig(tool_calls=True)
    client = sdk(doors)

    def stream() -> Any:
        with client.responses.stream(model=model, input="Weather?", tools=WEATHER) as events:
            return events.get_final_response()

    first = await in_thread(stream)
    call = first.output[-1]
    assert call.type == "function_call"
    assert call.name == "get_weather"
    assert call.arguments == '{"city":"fake"}'

    fake.config = FakeConfig()
    second = await in_thread(
        lambda: client.responses.create(
            model=model,
            input=[
                {"role": "user", "content": "Weather?"},
                {
                    "type": "function_call",
                    "call_id": call.call_id,
                    "name": call.name,
                    "arguments": call.arguments,
                },
                {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"},
            ],
            tools=WEATHER,
        )
    )
    assert second.output_text
    if model == "vllm":
        sent = fake.requests[-1].body["messages"]
        assert sent[1]["tool_calls"][0]["id"] == call.call_id
        assert sent[2] == {"role": "tool", "content": "Sunny", "tool_call_id": call.call_id}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"store": True}, "store"),
        ({"background": True}, "background"),
    ],
)
async def test_state_the_proxy_does_not_keep_is_refused_by_name(
    doors: str, sdk: SDK, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError, match=f"`{param}` needs responses stored") as caught:
        await in_thread(lambda: sdk(doors).responses.create(model="mock", input="Hi", **fields))
    assert caught.value.body["param"] == param  # type: ignore[index]


async def test_the_cache_never_answers_one_door_with_anothers_shape(
    doors: str, sdk: SDK, http: httpx.AsyncClient
) -> None:
    client = sdk(doors)
    chat = await in_thread(
        lambda: client.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "Hello"}]
        )
    )
    response = await http.post(f"{doors}/v1/responses", json={"model": "mock", "input": "Hello"})
    messages = await http.post(
        f"{doors}/v1/messages",
        json={
            "model": "mock",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": "Hello"}],
        },
    )
    again = await http.post(f"{doors}/v1/responses", json={"model": "mock", "input": "Hello"})

    assert chat.object == "chat.completion"
    assert response.json()["object"] == "response"
    assert response.headers["x-cache"] == "miss"
    assert messages.json()["type"] == "message"
    assert messages.headers["x-cache"] == "miss"
    assert again.headers["x-cache"] == "hit"
    assert again.json()["output"][0]["content"][0]["text"] == "Hi from the mock"
