"""MockProvider: deterministic answers, trio-clock delays, failure injection."""

from __future__ import annotations

import tracemalloc

import pytest
import trio
import trio.testing

from pipeline import Context, FunctionCall, Message, Pipeline, RateLimitError, Request, StreamError
from providers import MockProvider

from ..conftest import make_request


async def test_fixed_text_is_split_into_the_configured_chunks() -> None:
    provider = MockProvider("abcdefghij", chunks=4)
    async with Pipeline(provider).stream(make_request()) as stream:
        chunks = [c async for c in stream]
    texts = [c.text for c in chunks if c.choices and c.choices[0].delta.content]
    assert texts == ["abc", "def", "gh", "ij"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None


async def test_echo_answers_with_the_last_user_message() -> None:
    request = Request(
        model="m",
        messages=[
            Message(role="user", content="first"),
            Message(role="assistant", content="ok"),
            Message(role="user", content="echo me"),
        ],
    )
    assert (await Pipeline(MockProvider(echo=True)).complete(request)).text == "echo me"


async def test_handler_may_be_sync_or_async() -> None:
    def sync_handler(request: Request, ctx: Context) -> str:
        return f"sync:{request.model}"

    async def async_handler(request: Request, ctx: Context) -> str:
        await trio.lowlevel.checkpoint()
        return f"async:{request.messages[0].text}"

    assert (
        await Pipeline(MockProvider(handler=sync_handler)).complete(make_request())
    ).text == "sync:mock-1"
    assert (
        await Pipeline(MockProvider(handler=async_handler)).complete(make_request("hi"))
    ).text == "async:hi"


async def test_delays_follow_the_trio_clock(autojump_clock: trio.testing.MockClock) -> None:
    provider = MockProvider("abcd", chunks=4, ttft=2.0, chunk_delay=0.5)
    times = []
    start = trio.current_time()
    async with Pipeline(provider).stream(make_request()) as stream:
        async for _ in stream:
            times.append(trio.current_time() - start)
    # 4 text chunks, a finish chunk and a usage chunk.
    assert times == pytest.approx([2.0, 2.5, 3.0, 3.5, 4.0, 4.5])


async def test_tool_calls_stream_as_fragments() -> None:
    call = FunctionCall("get_weather", '{"city": "Paris", "unit": "celsius"}')
    response = await Pipeline(MockProvider(tool_calls=[call], chunks=5)).complete(make_request())
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    assert [c.function for c in choice.message.tool_calls] == [call]


async def test_max_tokens_cuts_the_answer_with_finish_reason_length() -> None:
    response = await Pipeline(MockProvider("x" * 100)).complete(make_request(max_tokens=5))
    assert response.choices[0].finish_reason == "length"
    assert response.text == "x" * 20
    assert response.usage is not None
    assert response.usage.completion_tokens == 5


async def test_error_before_the_first_chunk_for_the_first_n_calls() -> None:
    provider = MockProvider(error=RateLimitError("busy", retry_after=1), error_count=2)
    pipeline = Pipeline(provider)
    for _ in range(2):
        with pytest.raises(RateLimitError, match="busy"):
            await pipeline.handle(make_request())
    assert (await pipeline.complete(make_request())).text
    assert provider.calls == 3


async def test_fail_after_n_chunks_raises_a_stream_error() -> None:
    provider = MockProvider(chunks=10, fail_after=3)
    seen = 0
    with pytest.raises(StreamError, match="after 3 chunks"):
        async with Pipeline(provider).stream(make_request()) as stream:
            async for _ in stream:
                seen += 1
    assert seen == 3
    assert provider.open_streams == 0


async def test_usage_counts_prompt_and_completion() -> None:
    response = await Pipeline(MockProvider("12345678")).complete(make_request("a" * 40))
    assert response.usage is not None
    assert response.usage.completion_tokens == 2
    assert response.usage.prompt_tokens == 4 + 10


async def test_requests_are_kept_only_when_asked_so_memory_stays_flat() -> None:
    provider = MockProvider("ok", chunks=1)
    pipeline = Pipeline(provider)
    await pipeline.complete(make_request("warm up"), Context())
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1_000):
            # A fresh 100 KB message each time, as a server decodes one per call.
            await pipeline.complete(make_request(str(i) * 100_000), Context())
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert provider.calls == 1_001
    assert provider.requests == []
    assert grown < 2_000_000  # keeping them would be 1,000 x 100 KB and more

    big = make_request("x" * 100_000)
    recording = MockProvider("ok", record=True)
    await Pipeline(recording).complete(big, Context())
    assert recording.requests == [big]
