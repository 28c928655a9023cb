"""Azure OpenAI and Gemini upstreams: the official OpenAI SDK, the proxy, a fake over HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import openai
import pytest

from benchmarks.fake_upstream import FakeConfig, FakeUpstream, run_fake_upstream
from llm_proxy import build_stack, parse_config

from .conftest import Start, in_thread

KEY = "sk-upstream-0123456789abcdef"
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        },
    },
}


def config(url: str) -> str:
    return f"""
[log]
level = "error"

[retry]
max_attempts = 1

[[providers]]
name = "az"
kind = "azure"
base_url = "{url}"
api_key_env = "TEST_UPSTREAM_KEY"
options = {{ api_version = "2024-10-21" }}

[[providers]]
name = "az-entra"
kind = "azure"
base_url = "{url}"
api_key_env = "TEST_UPSTREAM_KEY"
options = {{ auth = "entra" }}

[[providers]]
name = "gm"
kind = "gemini"
base_url = "{url}/v1beta"
api_key_env = "TEST_UPSTREAM_KEY"

[[models]]
name = "gpt-4o"
provider = "az"
upstream_model = "my-gpt4o-deployment"

[[models]]
name = "gpt-4o-entra"
provider = "az-entra"
upstream_model = "entra-deployment"

[[models]]
name = "gemini"
provider = "gm"
upstream_model = "gemini-2.0-flash"
"""


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with run_fake_upstream(FakeConfig(api_key=KEY, record=True)) as fake:
        yield fake


@pytest.fixture
async def client(
    start_server: Start,
    upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
    sdk: Callable[[str], openai.OpenAI],
) -> openai.OpenAI:
    monkeypatch.setenv("TEST_UPSTREAM_KEY", KEY)
    stack = build_stack(parse_config(config(upstream.url)))
    url = await start_server(stack.pipeline, models_for=stack.models_for)
    return sdk(url)


# -- Azure -----------------------------------------------------------------------------------


async def test_azure_is_called_at_its_deployment_url_with_the_api_key_header(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    answer = await in_thread(
        lambda: client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hi"}]
        )
    )
    assert answer.choices[0].message.content
    assert answer.usage is not None
    [seen] = upstream.requests
    assert seen.path == "/openai/deployments/my-gpt4o-deployment/chat/completions"
    assert seen.headers["api-key"] == KEY
    assert "authorization" not in seen.headers


async def test_azure_streams_with_an_entra_token(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    def stream() -> str:
        chunks = client.chat.completions.create(
            model="gpt-4o-entra", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    assert await in_thread(stream)
    [seen] = upstream.requests
    assert seen.path == "/openai/deployments/entra-deployment/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert "api-key" not in seen.headers


async def test_azure_content_filter_refusal_is_a_400_that_says_so(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="content filter refused") as refused:
        await in_thread(
            lambda: client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "please FILTER_ME"}]
            )
        )
    assert refused.value.status_code == 400
    assert refused.value.code == "content_filter"


# -- Gemini ----------------------------------------------------------------------------------


async def test_gemini_answers_whole_with_system_instruction_and_usage(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    answer = await in_thread(
        lambda: client.chat.completions.create(
            model="gemini",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ],
            max_tokens=5,
            temperature=0.2,
        )
    )
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 5
    [seen] = upstream.requests
    assert seen.path == "/v1beta/models/gemini-2.0-flash:generateContent"
    assert seen.headers["x-goog-api-key"] == KEY
    assert seen.body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert seen.body["contents"] == [{"role": "user", "parts": [{"text": "Hi"}]}]
    assert seen.body["generationConfig"] == {"temperature": 0.2, "maxOutputTokens": 5}


async def test_gemini_streams_over_sse_with_usage(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    def stream() -> tuple[str, str | None, int | None]:
        chunks = list(
            client.chat.completions.create(
                model="gemini",
                messages=[{"role": "user", "content": "Hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = next(c.choices[0].finish_reason for c in chunks if c.choices[-1].finish_reason)
        usage = chunks[-1].usage
        return text, finish, usage.total_tokens if usage else None

    text, finish, total = await in_thread(stream)
    assert text.startswith("The quick brown fox")
    assert finish == "stop"
    assert total
    assert upstream.requests[0].path == "/v1beta/models/gemini-2.0-flash:streamGenerateContent"


async def test_gemini_function_calls_round_trip(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.config = FakeConfig(api_key=KEY, record=True, tool_calls=True)
    answer = await in_thread(
        lambda: client.chat.completions.create(
            model="gemini",
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[WEATHER],
            tool_choice="required",
        )
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "fake", "unit": "c"}
    sent = upstream.requests[0].body
    assert sent["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}

    upstream.config = FakeConfig(api_key=KEY, record=True)
    tool_call: Any = call.model_dump()
    follow_up = await in_thread(
        lambda: client.chat.completions.create(
            model="gemini",
            messages=[
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "tool_calls": [tool_call]},
                {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
            ],
        )
    )
    assert follow_up.choices[0].message.content
    contents = upstream.requests[1].body["contents"]
    assert contents[1] == {
        "role": "model",
        "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "fake", "unit": "c"}}}],
    }
    assert contents[2] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "get_weather", "response": {"content": "sunny"}}}],
    }


@pytest.mark.parametrize("stream", [False, True])
async def test_gemini_safety_blocks_finish_as_content_filter(
    client: openai.OpenAI, stream: bool
) -> None:
    def ask(prompt: str) -> str | None:
        messages: Any = [{"role": "user", "content": prompt}]
        if not stream:
            answer = client.chat.completions.create(model="gemini", messages=messages)
            return answer.choices[0].finish_reason
        chunks = client.chat.completions.create(model="gemini", messages=messages, stream=True)
        return next(c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason)

    assert await in_thread(lambda: ask("please BLOCK_ME")) == "content_filter"
    assert await in_thread(lambda: ask("please STOP_ME")) == "content_filter"


async def test_a_wrong_gemini_key_is_the_proxys_502(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.config = FakeConfig(api_key="another-key")
    with pytest.raises(openai.APIStatusError, match="API key not valid"):
        await in_thread(
            lambda: client.chat.completions.create(
                model="gemini", messages=[{"role": "user", "content": "Hi"}]
            )
        )
