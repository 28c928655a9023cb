"""The official OpenAI and Anthropic SDKs read the fake's answers and errors as real ones.

The SDKs' sync clients run in a worker thread (their async clients assume asyncio), with
short timeouts and no retries so a regression fails fast instead of hanging.
"""

from __future__ import annotations

import anthropic
import openai
import pytest
import trio
from anthropic.types import MessageParam, ToolParam
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from benchmarks.fake_upstream import FakeUpstream, fake_text

OPENAI_MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
ANTHROPIC_MESSAGES: list[MessageParam] = [{"role": "user", "content": "hi"}]
OPENAI_TOOL: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {"type": "object", "properties": {"term": {"type": "string"}}},
    },
}
ANTHROPIC_TOOL: ToolParam = {
    "name": "lookup",
    "input_schema": {"type": "object", "properties": {"count": {"type": "integer"}}},
}


def openai_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0, timeout=10)


def anthropic_client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="sk-ant-test", max_retries=0, timeout=10)


async def test_openai_sdk_reads_whole_and_streamed_answers(fake_upstream: FakeUpstream) -> None:
    def run() -> None:
        client = openai_client(fake_upstream.url)
        completion = client.chat.completions.create(model="fake-gpt", messages=OPENAI_MESSAGES)
        assert completion.choices[0].message.content == fake_text(200)
        assert completion.usage is not None
        assert completion.usage.completion_tokens == 50
        stream = client.chat.completions.create(
            model="fake-gpt",
            messages=OPENAI_MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            fake_text(200)
        )
        assert chunks[-1].usage is not None
        with client.chat.completions.stream(
            model="fake-gpt",
            messages=OPENAI_MESSAGES,
            tools=[OPENAI_TOOL],
            extra_headers={"x-fake-tool-calls": "true"},
        ) as tool_stream:
            final = tool_stream.get_final_completion()
        (call,) = final.choices[0].message.tool_calls or []
        assert call.function.name == "lookup"
        assert call.function.arguments == '{"term":"fake"}'
        assert [model.id for model in client.models.list()] == [
            "fake-gpt",
            "fake-claude",
            "fake-completions",
        ]

    await trio.to_thread.run_sync(run)


async def test_openai_sdk_raises_the_fakes_errors(fake_upstream: FakeUpstream) -> None:
    def run() -> None:
        client = openai_client(fake_upstream.url)
        with pytest.raises(openai.RateLimitError, match=r"Fake upstream error \(status 429\)"):
            client.chat.completions.create(
                model="fake-gpt", messages=OPENAI_MESSAGES, extra_headers={"x-fake-status": "429"}
            )
        stream = client.chat.completions.create(
            model="fake-gpt",
            messages=OPENAI_MESSAGES,
            stream=True,
            extra_headers={"x-fake-stream-error-after": "1"},
        )
        with pytest.raises(openai.APIError, match="error while processing"):
            list(stream)

    await trio.to_thread.run_sync(run)


async def test_anthropic_sdk_reads_whole_and_streamed_answers(fake_upstream: FakeUpstream) -> None:
    def run() -> None:
        client = anthropic_client(fake_upstream.url)
        message = client.messages.create(
            model="fake-claude", max_tokens=100, messages=ANTHROPIC_MESSAGES
        )
        assert message.content[0].type == "text"
        assert message.content[0].text == fake_text(200)
        assert (message.stop_reason, message.usage.output_tokens) == ("end_turn", 50)
        with client.messages.stream(
            model="fake-claude", max_tokens=100, messages=ANTHROPIC_MESSAGES
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text == fake_text(200)
        assert (final.stop_reason, final.usage.input_tokens, final.usage.output_tokens) == (
            "end_turn",
            1,
            50,
        )
        with client.messages.stream(
            model="fake-claude",
            max_tokens=100,
            messages=ANTHROPIC_MESSAGES,
            tools=[ANTHROPIC_TOOL],
            extra_headers={"x-fake-tool-calls": "true", "x-fake-api-key": "sk-ant-test"},
        ) as stream:
            final = stream.get_final_message()
        (block,) = final.content
        assert block.type == "tool_use"
        assert (block.name, block.input) == ("lookup", {"count": 1})

    await trio.to_thread.run_sync(run)


async def test_anthropic_sdk_raises_the_fakes_errors(fake_upstream: FakeUpstream) -> None:
    def run() -> None:
        client = anthropic_client(fake_upstream.url)
        with pytest.raises(
            anthropic.InternalServerError, match=r"Fake upstream error \(status 529\)"
        ) as caught:
            client.messages.create(
                model="fake-claude",
                max_tokens=100,
                messages=ANTHROPIC_MESSAGES,
                extra_headers={"x-fake-status": "529"},
            )
        assert caught.value.status_code == 529
        with (
            pytest.raises(anthropic.APIStatusError, match="overloaded_error"),
            client.messages.stream(
                model="fake-claude",
                max_tokens=100,
                messages=ANTHROPIC_MESSAGES,
                extra_headers={"x-fake-stream-error-after": "1"},
            ) as stream,
        ):
            stream.get_final_message()

    await trio.to_thread.run_sync(run)
