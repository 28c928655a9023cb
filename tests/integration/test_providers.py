"""Every provider against the fake LLM upstream, over real HTTP: answers and every failure.

Knobs are set per provider (`connect(kind, knobs=...)` sends them as `x-fake-*` headers).
Real time, so every wait is short and bounded: a regression fails fast instead of hanging.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import trio

from benchmarks.fake_upstream import FakeUpstream, fake_text
from pipeline import (
    ChatCompletion,
    Chunk,
    Context,
    FunctionDef,
    GatewayTimeoutError,
    ProviderError,
    Request,
    StreamError,
    Tool,
    estimate_tokens,
)
from providers import HTTPProvider

from ..conftest import make_request
from .conftest import Connect

ALL_KINDS = pytest.mark.parametrize("kind", ["openai", "anthropic", "completions"])
TOOL_KINDS = pytest.mark.parametrize("kind", ["openai", "anthropic"])
BOTH_MODES = pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
BOUND = 5.0
"""Seconds any test may take; only a failure comes near it."""
TEXT = fake_text(200)  # the fake's default answer
TOKENS = 50  # the fake counts a token per four characters

STREAM_ERRORS = {
    "openai": "The server had an error while processing your request.",
    "anthropic": "Overloaded",
    "completions": "The server had an error while processing your request.",
}
"""The message of the error event each API's fake stream ends with (`stream_error_after`)."""

WEATHER = Tool(
    FunctionDef(
        name="get_weather",
        parameters={
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
        },
    )
)
WEATHER_ARGUMENTS = '{"city":"fake","unit":"celsius"}'  # the fake fills in the schema


async def ask(provider: HTTPProvider, request: Request) -> ChatCompletion:
    """The provider's whole answer, within `BOUND` seconds."""
    with trio.fail_after(BOUND):
        return await (await provider.execute(request, Context())).collect()


async def read_until_error(
    provider: HTTPProvider, request: Request
) -> tuple[list[Chunk], Exception]:
    """The chunks a stream produced before it failed, and the error it failed with."""
    chunks: list[Chunk] = []
    with trio.fail_after(BOUND):
        stream = await provider.execute(request, Context())
        try:
            async with stream:
                async for chunk in stream:
                    chunks.append(chunk)
        except Exception as exc:
            return chunks, exc
    raise AssertionError(f"the stream ended cleanly after {len(chunks)} chunks")


# -- answers -------------------------------------------------------------------------------


@ALL_KINDS
@BOTH_MODES
async def test_the_answer_is_the_fakes_text_with_its_usage(
    kind: str, stream: bool, connect: Connect, fake_upstream: FakeUpstream
) -> None:
    answer = await ask(connect(kind), make_request("Hello there", stream=stream))

    assert answer.text == TEXT
    assert answer.choices[0].finish_reason == "stop"
    usage = answer.usage
    assert usage is not None
    if kind == "completions" and stream:
        # This API's stream carries no usage: the provider estimates it.
        assert usage.completion_tokens == estimate_tokens(TEXT)
    else:
        assert usage.completion_tokens == TOKENS
    assert usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    (seen,) = fake_upstream.requests
    assert seen.body.get("stream", False) is stream


async def test_an_openai_stream_asks_for_usage_the_client_did_not(
    connect: Connect, fake_upstream: FakeUpstream
) -> None:
    await ask(connect("openai"), make_request(stream=True))

    assert fake_upstream.requests[0].body["stream_options"] == {"include_usage": True}


@TOOL_KINDS
@BOTH_MODES
async def test_a_tool_call_comes_back_whole(kind: str, stream: bool, connect: Connect) -> None:
    provider = connect(kind, knobs={"tool_calls": "true"})

    answer = await ask(provider, make_request("Weather?", stream=stream, tools=[WEATHER]))

    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert call.function.arguments == WEATHER_ARGUMENTS
    assert call.id
    assert answer.usage is not None
    assert answer.usage.completion_tokens > 0


# -- upstream error statuses ---------------------------------------------------------------


@ALL_KINDS
@BOTH_MODES
@pytest.mark.parametrize("status", [400, 401, 403, 404, 408, 409, 413, 422, 429, 500, 503])
async def test_an_upstream_status_becomes_a_provider_error_with_its_message(
    kind: str, stream: bool, status: int, connect: Connect
) -> None:
    provider = connect(kind, knobs={"status": status})

    with trio.fail_after(BOUND), pytest.raises(ProviderError) as info:
        await provider.execute(make_request(stream=stream), Context())

    error = info.value
    assert type(error) is ProviderError
    assert error.upstream_status == status
    # 401 and 403 refuse the proxy's own credentials, not the client's: a gateway error.
    # 503 says "come back later", which a client should hear as it is.
    kept = (status < 500 and status not in (401, 403)) or status == 503
    assert error.status == (status if kept else 502)
    assert error.retryable is (status in (408, 409, 429) or status >= 500)
    assert f"Fake upstream error (status {status})" in error.message
    assert error.provider == f"fake-{kind}"


@ALL_KINDS
async def test_retry_after_in_seconds_is_kept(kind: str, connect: Connect) -> None:
    provider = connect(kind, knobs={"status": 429, "retry_after": 7})

    with trio.fail_after(BOUND), pytest.raises(ProviderError, match=r"\(status 429\)") as info:
        await provider.execute(make_request(), Context())

    assert info.value.retry_after == 7


@ALL_KINDS
async def test_retry_after_as_an_http_date_becomes_seconds(kind: str, connect: Connect) -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    provider = connect(
        kind, knobs={"status": 429, "retry_after": format_datetime(when, usegmt=True)}
    )

    with trio.fail_after(BOUND), pytest.raises(ProviderError, match=r"\(status 429\)") as info:
        await provider.execute(make_request(), Context())

    # The date has whole seconds, and a little time passed since it was made.
    assert info.value.retry_after == pytest.approx(120, abs=3)


# -- broken streams ------------------------------------------------------------------------


@ALL_KINDS
async def test_malformed_json_in_an_event_is_a_stream_error(kind: str, connect: Connect) -> None:
    provider = connect(kind, knobs={"malformed_after": 2})

    chunks, error = await read_until_error(provider, make_request())

    assert type(error) is StreamError
    assert "malformed" in error.message
    assert error.retryable is False  # chunks went out: nothing may be retried
    assert "".join(chunk.text for chunk in chunks) == TEXT[:40]


@ALL_KINDS
async def test_a_malformed_whole_answer_is_a_stream_error(kind: str, connect: Connect) -> None:
    provider = connect(kind, knobs={"malformed_after": 0})

    with trio.fail_after(BOUND), pytest.raises(StreamError, match="malformed") as info:
        await provider.execute(make_request(stream=False), Context())

    assert info.value.retryable is True  # nothing reached the client yet


@ALL_KINDS
async def test_an_error_event_mid_stream_is_a_stream_error_with_its_message(
    kind: str, connect: Connect
) -> None:
    provider = connect(kind, knobs={"stream_error_after": 3})

    chunks, error = await read_until_error(provider, make_request())

    assert type(error) is StreamError
    assert STREAM_ERRORS[kind] in str(error)
    assert "".join(chunk.text for chunk in chunks) == TEXT[:60]


@ALL_KINDS
async def test_a_connection_dropped_mid_stream_is_a_stream_error(
    kind: str, connect: Connect, fake_upstream: FakeUpstream
) -> None:
    provider = connect(kind, knobs={"drop_after": 4})

    chunks, error = await read_until_error(provider, make_request())

    assert type(error) is StreamError
    assert "broke mid-stream" in error.message
    assert chunks
    assert fake_upstream.disconnects == []  # the fake hung up, not the provider


@ALL_KINDS
async def test_a_connection_dropped_mid_answer_is_a_retryable_stream_error(
    kind: str, connect: Connect
) -> None:
    provider = connect(kind, knobs={"drop_after": 10})

    with trio.fail_after(BOUND), pytest.raises(StreamError, match="broke") as info:
        await provider.execute(make_request(stream=False), Context())

    assert info.value.retryable is True


@ALL_KINDS
async def test_a_stream_without_a_finish_reason_is_a_stream_error(
    kind: str, connect: Connect
) -> None:
    provider = connect(kind, knobs={"no_finish": "true"})

    chunks, error = await read_until_error(provider, make_request())

    assert type(error) is StreamError
    assert "ended without a" in error.message
    assert "".join(chunk.text for chunk in chunks) == TEXT


@ALL_KINDS
@BOTH_MODES
async def test_an_answer_written_byte_by_byte_decodes_the_same(
    kind: str, stream: bool, connect: Connect
) -> None:
    provider = connect(kind, knobs={"byte_by_byte": "true", "text_length": 60, "chunks": 4})

    answer = await ask(provider, make_request(stream=stream))

    assert answer.text == fake_text(60)
    assert answer.choices[0].finish_reason == "stop"


# -- time and cancellation -----------------------------------------------------------------


@ALL_KINDS
async def test_a_slow_first_token_is_a_gateway_timeout_and_hangs_up(
    kind: str, connect: Connect, fake_upstream: FakeUpstream
) -> None:
    provider = connect(kind, knobs={"ttft": 30}, first_token_timeout=0.3)

    with trio.fail_after(BOUND):
        with pytest.raises(GatewayTimeoutError, match="first") as info:
            await ask(provider, make_request())
        (gone,) = await fake_upstream.wait_for_disconnects(1)

    assert info.value.retryable is True
    assert gone.events_sent == 0


@ALL_KINDS
async def test_a_whole_answer_slower_than_the_timeout_is_a_gateway_timeout(
    kind: str, connect: Connect, fake_upstream: FakeUpstream
) -> None:
    provider = connect(kind, knobs={"ttft": 30}, timeout=0.3)

    with trio.fail_after(BOUND):
        with pytest.raises(GatewayTimeoutError, match="did not answer before the deadline"):
            await ask(provider, make_request(stream=False))
        await fake_upstream.wait_for_disconnects(1)


@ALL_KINDS
async def test_cancelling_the_consumer_mid_stream_hangs_up_on_the_upstream(
    kind: str, connect: Connect, fake_upstream: FakeUpstream
) -> None:
    provider = connect(kind, knobs={"chunks": 40, "chunk_delay": 0.05})
    received = 0

    with trio.fail_after(BOUND):
        with trio.CancelScope() as consumer:
            stream = await provider.execute(make_request(), Context())
            async with stream:
                async for chunk in stream:
                    received += 1
                    if chunk.text:
                        consumer.cancel()
        (gone,) = await fake_upstream.wait_for_disconnects(1)

    assert consumer.cancelled_caught
    assert gone.path == fake_upstream.requests[0].path
    assert 0 < gone.events_sent < 40


# -- validate ------------------------------------------------------------------------------


@ALL_KINDS
async def test_validate_passes_with_the_key(
    kind: str, connect: Connect, fake_upstream: FakeUpstream
) -> None:
    with trio.fail_after(BOUND):
        await connect(kind).validate()

    (seen,) = fake_upstream.requests
    assert seen.method == "GET"


@ALL_KINDS
async def test_validate_without_the_key_the_upstream_wants_fails(
    kind: str, connect: Connect
) -> None:
    with (
        trio.fail_after(BOUND),
        pytest.raises(
            ProviderError, match=r"rejected the proxy's credentials \(HTTP 401\)"
        ) as info,
    ):
        await connect(kind, key=False).validate()

    assert info.value.upstream_status == 401
    assert info.value.status == 502
    assert "rejected the proxy's credentials" in info.value.message
    assert "key" in info.value.message
