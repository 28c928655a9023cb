"""What every HTTP provider shares: errors, deadlines, broken streams, secrets, config."""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from http11 import PoolStatistics
from middlewares import Timeout
from pipeline import (
    Chunk,
    ConfigError,
    Context,
    Delta,
    GatewayTimeoutError,
    Pipeline,
    ProviderError,
    ProxyError,
    StreamError,
    StreamLimits,
)
from providers import (
    AnthropicProvider,
    CompletionsProvider,
    HTTPProvider,
    OpenAIProvider,
    ProviderConfig,
    parse_retry_after,
)
from providers._http import is_loopback

from ..conftest import make_request
from .helpers import (
    ERROR_BODIES,
    KEY,
    KINDS,
    ODD_KEY,
    TEXT_EVENTS,
    Answer,
    Received,
    Reply,
    ScriptedBody,
    Upstream,
    completions_text_events,
    event_response,
    json_response,
    make_provider,
    read_into,
    refused_url,
    unresponsive_url,
)

ALL_KINDS = pytest.mark.parametrize("kind", list(KINDS))

# What each API sends before the answer's first piece: OpenAI's role chunk, Anthropic's
# message_start and an empty text block, an empty completion.
OPENING: dict[str, list[Any]] = {
    "openai": TEXT_EVENTS["openai"](finish=False),
    "anthropic": TEXT_EVENTS["anthropic"](finish=False),
    "completions": [{"text": "", "finish_reason": None}],
}


async def execute(
    provider: HTTPProvider, *, stream: bool = True, ctx: Context | None = None
) -> Any:
    return await provider.execute(make_request(stream=stream), ctx or Context())


# -- upstream statuses ---------------------------------------------------------------------

# upstream status -> (our status, retryable)
STATUSES = {
    400: (400, False),
    401: (502, False),
    403: (502, False),
    404: (404, False),
    408: (408, True),
    409: (409, True),
    413: (413, False),
    422: (422, False),
    429: (429, True),
    500: (502, True),
    502: (502, True),
    503: (503, True),
    529: (502, True),
}


@ALL_KINDS
@pytest.mark.parametrize("upstream_status", list(STATUSES))
@pytest.mark.parametrize("stream", [True, False])
async def test_an_error_status_becomes_a_provider_error_with_the_upstream_message(
    kind: str, upstream_status: int, stream: bool
) -> None:
    upstream = Upstream(json_response(ERROR_BODIES[kind]("model is sleeping"), upstream_status))
    with pytest.raises(ProviderError, match=r"model is sleeping$") as info:
        await execute(make_provider(kind, upstream), stream=stream)
    error = info.value
    assert (error.status, error.retryable) == STATUSES[upstream_status]
    assert error.upstream_status == upstream_status
    assert error.provider == kind


async def test_the_upstream_error_code_and_param_are_kept() -> None:
    body = {
        "error": {
            "message": "too long",
            "type": "invalid_request_error",
            "code": "context_length_exceeded",
            "param": "messages",
        }
    }
    with pytest.raises(ProviderError, match="too long") as info:
        await execute(make_provider("openai", Upstream(json_response(body, 400))))
    assert info.value.code == "context_length_exceeded"
    assert info.value.param == "messages"


async def test_the_anthropic_error_type_becomes_the_code() -> None:
    body = ERROR_BODIES["anthropic"]("slow down")
    body["error"]["type"] = "rate_limit_error"
    with pytest.raises(ProviderError, match="slow down") as info:
        await execute(make_provider("anthropic", Upstream(json_response(body, 429))))
    assert info.value.code == "rate_limit_error"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b"<html><body>\n  Bad   Gateway\n</body></html>",
            "<html><body> Bad Gateway </body></html>",
        ),
        (b'{"detail": "Not authenticated"}', "Not authenticated"),
        (b'{"error": "plain string"}', "plain string"),
        (b'{"object": "error", "message": "vllm says no"}', "vllm says no"),
        (b"", "the upstream answered HTTP 503"),
        (b"x" * 2000, "x" * 500 + "..."),
    ],
)
async def test_other_error_bodies_are_quoted_trimmed(body: bytes, message: str) -> None:
    upstream = Upstream(Reply(503, body=body))
    with pytest.raises(ProviderError) as info:
        await execute(make_provider("openai", upstream))
    assert info.value.message == message


async def test_only_the_start_of_a_huge_error_body_is_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Paced, so that the sockets' buffers do not take the whole body at once.
    body = ScriptedBody([b"x" * 65536] * 100, delay=0.1)
    upstream = Upstream(Reply(500, body=body))
    with pytest.raises(ProviderError) as info:
        await execute(make_provider("openai", upstream))
    assert info.value.message == "x" * 500 + "..."
    assert body.sent < 100
    assert body.closed


@ALL_KINDS
async def test_a_whole_answer_larger_than_the_limit_is_refused(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    body = ScriptedBody([b" " * 1024 * 1024] * 20, delay=0.1)
    upstream = Upstream(Reply(200, body=body))
    with pytest.raises(StreamError, match="larger than 16 MiB") as info:
        await execute(make_provider(kind, upstream), stream=False)
    assert not info.value.retryable
    assert body.sent < 20
    assert body.closed


async def test_retry_after_in_seconds() -> None:
    upstream = Upstream(json_response({}, 429, headers={"retry-after": "17"}))
    with pytest.raises(ProviderError) as info:
        await execute(make_provider("openai", upstream))
    assert info.value.retry_after == 17
    assert info.value.retryable


async def test_retry_after_as_an_http_date() -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    upstream = Upstream(json_response({}, 503, headers={"retry-after": when}))
    with pytest.raises(ProviderError) as info:
        await execute(make_provider("anthropic", upstream))
    assert info.value.retry_after is not None
    assert 110 <= info.value.retry_after <= 121


def test_retry_after_parsing() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("0") == 0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after("-3") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0


# -- the API key stays secret --------------------------------------------------------------


@ALL_KINDS
async def test_the_key_is_never_in_an_error_or_a_repr(kind: str) -> None:
    echo = ERROR_BODIES[kind](f"Incorrect API key provided: {KEY}")
    upstream = Upstream(json_response(echo, 401, headers={"retry-after": "1"}))
    provider = make_provider(kind, upstream)
    with pytest.raises(ProviderError) as info:
        await execute(provider)
    error = info.value
    assert error.message.endswith("Incorrect API key provided: [redacted]")
    for text in (str(error), repr(error), error.to_json().decode(), repr(provider)):
        assert KEY not in text
    assert KEY not in str(vars(error))


@ALL_KINDS
async def test_a_key_echoed_in_a_stream_error_event_is_redacted(kind: str) -> None:
    message = f"bad key {KEY}"
    error: Any = ("error", {"type": "error", "error": {"type": "api_error", "message": message}})
    if kind != "anthropic":
        error = ("error", {"error": {"message": message}})
    upstream = Upstream(event_response([*TEXT_EVENTS[kind]("a", finish=False), error]))
    with pytest.raises(StreamError, match=r"bad key \[redacted\]") as info:
        await (await execute(make_provider(kind, upstream))).collect()
    assert KEY not in repr(info.value)


async def test_a_key_echoed_in_a_plain_body_is_redacted_too() -> None:
    upstream = Upstream(Reply(403, body=f"forbidden for {KEY}!".encode()))
    with pytest.raises(ProviderError) as info:
        await execute(make_provider("completions", upstream))
    assert info.value.message.endswith(": forbidden for [redacted]!")


KEY_FORMS: dict[str, Callable[[str], str]] = {
    "raw": lambda key: key,
    "repr": repr,
    "bytes repr": lambda key: repr(key.encode()),
    "json": lambda key: json.dumps(key),
    "header repr": lambda key: repr(f"Bearer {key}\n".encode()),
}


def failing_upstreams(kind: str, text: str) -> dict[str, tuple[Answer, bool]]:
    """Ways an upstream call fails with `text` in what the provider sees: (answer, stream)."""
    error_event: Any = ("error", {"error": {"message": text}})
    if kind == "anthropic":
        error_event = ("error", {"type": "error", "error": {"type": "api_error", "message": text}})
    partial = TEXT_EVENTS[kind]("a", finish=False)
    return {
        "error status": (json_response(ERROR_BODIES[kind](text), 401), True),
        "error status, plain body": (Reply(500, body=text.encode()), False),
        "error object, status 200": (json_response(ERROR_BODIES[kind](text)), False),
        "error event": (event_response([*partial, error_event]), True),
        "error event first": (event_response([error_event]), True),
        "error object as an event": (
            event_response([*partial, error_event[1]]),
            True,
        ),
    }


SCENARIOS = list(failing_upstreams("openai", ""))


@ALL_KINDS
@pytest.mark.parametrize("form", list(KEY_FORMS))
@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_the_key_is_redacted_from_every_error_however_it_is_escaped(
    kind: str, form: str, scenario: str
) -> None:
    text = f"upstream said: {KEY_FORMS[form](ODD_KEY)}"
    answer, stream = failing_upstreams(kind, text)[scenario]
    provider = make_provider(kind, Upstream(answer), api_key=ODD_KEY)
    with pytest.raises(ProxyError, match=re.escape("[redacted]")) as info:
        await (await execute(provider, stream=stream)).collect()
    error = info.value
    for shown in (error.message, str(error), error.to_json().decode(), str(error.code)):
        assert "7f3a9c1b" not in shown
    assert "upstream said" in error.message


@ALL_KINDS
@pytest.mark.parametrize(
    ("failure", "error"),
    [
        ("no connection", "cannot reach upstream"),
        ("no answer", "closed the connection without answering"),
        ("body broken", "broke while reading the answer"),
        ("stream broken", "broke mid-stream"),
        ("stream stalled", "no data from the upstream for 5s"),
    ],
)
async def test_transport_failures_say_what_broke_and_never_show_the_key(
    kind: str, failure: str, error: str
) -> None:
    async def hang_up(request: Received) -> Reply:
        raise trio.BrokenResourceError

    partial = TEXT_EVENTS[kind]("a", finish=False)
    answers: dict[str, tuple[Answer, bool]] = {
        "no answer": (hang_up, True),
        "body broken": (event_response(["{"], drop=True), False),
        "stream broken": (event_response(partial, drop=True), True),
        "stream stalled": (event_response(partial, hang=True), True),
    }
    if failure == "no connection":
        provider = make_provider(kind, refused_url(), api_key=ODD_KEY, timeout=5)
        stream = True
    else:
        answer, stream = answers[failure]
        provider = make_provider(kind, Upstream(answer), api_key=ODD_KEY, timeout=5)
    with trio.fail_after(10), pytest.raises(ProxyError, match=error) as info:
        await (await execute(provider, stream=stream)).collect()
    for shown in (info.value.message, info.value.to_json().decode(), repr(info.value)):
        assert "7f3a9c1b" not in shown


@pytest.mark.parametrize("key", ["sk-one\nhost: evil.example", "sk-two\r", "sk-\x00"])
def test_a_key_that_would_break_the_request_is_refused_without_showing_it(key: str) -> None:
    with pytest.raises(ConfigError, match="header `authorization` contains a line break") as info:
        OpenAIProvider("http://127.0.0.1:9/v1", api_key=key)
    assert key not in str(info.value)
    assert "sk-" not in str(info.value)


@pytest.mark.parametrize("before", [470, 490, 495, 499, 500])
async def test_a_long_body_is_redacted_before_it_is_trimmed(before: int) -> None:
    # Trimmed first, the key cut at the limit would no longer match and its head would stay.
    upstream = Upstream(Reply(500, body=b"x" * before + KEY.encode() + b"y" * 100))
    with pytest.raises(ProviderError) as info:
        await execute(make_provider("openai", upstream))
    assert KEY[:4] not in info.value.message
    assert info.value.message.endswith("...")


@ALL_KINDS
@pytest.mark.parametrize("before", [150, 190, 195, 480, 495])
async def test_a_long_error_event_is_redacted_before_it_is_trimmed(kind: str, before: int) -> None:
    data = "z" * before + KEY + "z" * 600
    events: list[Any] = [("error", data)]
    if kind == "anthropic":
        events = [("error", {"type": "error", "error": {"type": "api_error", "message": data}})]
    upstream = Upstream(event_response([*TEXT_EVENTS[kind]("a", finish=False), *events]))
    with pytest.raises(StreamError) as info:
        await (await execute(make_provider(kind, upstream))).collect()
    assert KEY[:4] not in info.value.message
    assert len(info.value.message) < 600


# -- transport failures and deadlines ------------------------------------------------------


@ALL_KINDS
async def test_no_connection_is_a_retryable_provider_error_without_status(kind: str) -> None:
    with pytest.raises(ProviderError, match=r"cannot reach upstream.*cannot connect") as info:
        await execute(make_provider(kind, refused_url()))
    assert info.value.upstream_status is None
    assert info.value.retryable
    assert info.value.status == 502


@ALL_KINDS
async def test_an_upstream_closing_without_answering_is_a_provider_error_without_status(
    kind: str,
) -> None:
    async def hang_up(request: Received) -> Reply:
        raise trio.BrokenResourceError

    with pytest.raises(ProviderError, match="closed the connection without answering") as info:
        await execute(make_provider(kind, Upstream(hang_up)))
    assert info.value.upstream_status is None
    assert info.value.retryable


@ALL_KINDS
async def test_a_connect_timeout_is_a_gateway_timeout(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    with unresponsive_url() as url, pytest.raises(GatewayTimeoutError, match="within 2 s") as info:
        await execute(make_provider(kind, url, connect_timeout=2))
    assert info.value.retryable


@ALL_KINDS
@pytest.mark.parametrize("stream", [True, False])
async def test_the_context_deadline_bounds_waiting_for_the_answer(
    kind: str, stream: bool, autojump_clock: trio.testing.MockClock
) -> None:
    async def slow(request: Received) -> Reply:
        await trio.sleep(100)
        raise AssertionError("the deadline should have cancelled this")

    provider = make_provider(kind, Upstream(slow))
    start = trio.current_time()
    with pytest.raises(GatewayTimeoutError, match="deadline"):
        await execute(provider, stream=stream, ctx=Context(deadline=start + 3))
    assert trio.current_time() - start == pytest.approx(3)


@ALL_KINDS
async def test_the_deadline_bounds_a_stream_that_stalls_and_closes_it(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    upstream = Upstream(event_response(TEXT_EVENTS[kind]("a", "b", finish=False), hang=True))
    provider = make_provider(kind, upstream)
    stream = await execute(provider, ctx=Context(deadline=trio.current_time() + 5))
    received: list[Chunk] = []
    with pytest.raises(GatewayTimeoutError, match="did not finish before the deadline") as info:
        await read_into(stream, received)
    assert len(received) >= 2
    assert not info.value.retryable
    assert upstream.stream.closed


@ALL_KINDS
async def test_the_timeout_bounds_a_whole_answer(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    # The headers come at once, the body never ends: no single wait is longer than the
    # timeout here, the whole answer is.
    async def trickle(request: Received) -> Reply:
        return Reply(200, body=ScriptedBody([b" "] * 100, delay=1))

    provider = make_provider(kind, Upstream(trickle), timeout=10)
    with pytest.raises(GatewayTimeoutError, match="did not answer before the deadline") as info:
        await execute(provider, stream=False)
    assert trio.current_time() == pytest.approx(10)
    assert info.value.retryable


@ALL_KINDS
async def test_a_stream_may_last_longer_than_the_timeout(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    # The whole stream belongs to ctx.deadline and the Timeout middleware, not to the
    # provider's timeout, which bounds each wait.
    texts = [str(i) for i in range(20)]
    upstream = Upstream(event_response(TEXT_EVENTS[kind](*texts), first_delay=0, delay=3))
    answer = await (await execute(make_provider(kind, upstream, timeout=10))).collect()
    assert answer.text == "".join(texts)
    assert trio.current_time() > 10


@ALL_KINDS
async def test_the_timeout_does_not_bound_the_time_to_the_first_chunk(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    # That is the first-token timeout's job (and ctx.deadline's, and the middleware's).
    upstream = Upstream(event_response(TEXT_EVENTS[kind]("a"), first_delay=50))
    answer = await (await execute(make_provider(kind, upstream, timeout=10))).collect()
    assert answer.text == "a"


@ALL_KINDS
async def test_the_timeout_bounds_each_read_of_a_stream(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    events = TEXT_EVENTS[kind]("a", "b", finish=False)
    upstream = Upstream(event_response(events, first_delay=0, delay=4, hang=True))
    provider = make_provider(kind, upstream, timeout=10)
    received: list[Chunk] = []
    with (
        trio.fail_after(1000),
        pytest.raises(GatewayTimeoutError, match="no data from the upstream for 10s") as info,
    ):
        await read_into(await execute(provider), received)
    assert [chunk.text for chunk in received] == ["a", "b"]
    assert trio.current_time() == pytest.approx(4 * (len(events) - 1) + 10)
    assert not info.value.retryable
    assert upstream.stream.closed


@ALL_KINDS
async def test_a_stream_that_never_started_says_so(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    upstream = Upstream(event_response(TEXT_EVENTS[kind]("a"), first_delay=50))
    stream = await execute(make_provider(kind, upstream), ctx=Context(deadline=20))
    with pytest.raises(GatewayTimeoutError, match="did not start before the deadline") as info:
        await stream.collect()
    assert info.value.retryable


@ALL_KINDS
async def test_the_first_token_timeout_bounds_the_first_chunk_only(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    slow_start = Upstream(event_response(TEXT_EVENTS[kind]("a"), first_delay=5))
    with pytest.raises(GatewayTimeoutError, match="first") as info:
        await (await execute(make_provider(kind, slow_start, first_token_timeout=2))).collect()
    assert info.value.retryable
    assert slow_start.stream.closed

    # The first read brings the opening events and the first text, the others come slowly.
    events = TEXT_EVENTS[kind]("a", "b", "c")
    slow_later = Upstream(event_response(events, per_read=len(OPENING[kind]) + 1, delay=1.5))
    answer = await (await execute(make_provider(kind, slow_later, first_token_timeout=2))).collect()
    assert answer.text == "abc"


# -- broken streams ------------------------------------------------------------------------


@ALL_KINDS
async def test_malformed_json_before_the_first_chunk_is_a_retryable_stream_error(
    kind: str,
) -> None:
    upstream = Upstream(event_response(["{not json"]))
    stream = await execute(make_provider(kind, upstream))
    with pytest.raises(StreamError, match="malformed") as info:
        await stream.__anext__()
    assert info.value.retryable
    assert upstream.stream.closed


@ALL_KINDS
async def test_malformed_json_after_a_chunk_is_a_final_stream_error(kind: str) -> None:
    upstream = Upstream(event_response([*TEXT_EVENTS[kind]("a", finish=False), "{broken"]))
    stream = await execute(make_provider(kind, upstream))
    with pytest.raises(StreamError, match="malformed") as info:
        async for _ in stream:
            pass
    assert not info.value.retryable
    assert upstream.stream.closed


@ALL_KINDS
@pytest.mark.parametrize("stream", [True, False])
async def test_a_body_that_is_not_the_expected_shape_is_a_stream_error(
    kind: str, stream: bool
) -> None:
    upstream = Upstream(Reply(200, body=b"<html>maintenance</html>"))
    # A stream finds no events and ends early; a whole answer is not JSON.
    expected = r"ended without a (finish|stop)[ _]reason" if stream else "sent a malformed answer"
    with pytest.raises(StreamError, match=expected) as info:
        await (await execute(make_provider(kind, upstream), stream=stream)).collect()
    assert info.value.retryable


@ALL_KINDS
async def test_a_line_that_never_ends_is_a_stream_error(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    parts = [b"data: "] + [b"x" * 65536] * 20  # 1.25 MiB of one line, and it goes on
    headers = {"content-type": "text/event-stream"}
    # Paced, so that the sockets' buffers do not take the whole body at once.
    body = ScriptedBody(parts, delay=0.1, hang=True)
    upstream = Upstream(Reply(200, headers, body))
    stream = await execute(make_provider(kind, upstream))
    with trio.fail_after(10), pytest.raises(StreamError, match="longer than 1048576 bytes") as info:
        await stream.collect()
    assert info.value.retryable
    assert body.sent <= 18
    assert upstream.stream.closed


@ALL_KINDS
async def test_a_connection_dropped_mid_stream_is_a_stream_error(kind: str) -> None:
    events = TEXT_EVENTS[kind]("a", "b", finish=False)
    upstream = Upstream(event_response(events, drop=True))
    stream = await execute(make_provider(kind, upstream))
    received: list[Chunk] = []
    with pytest.raises(StreamError, match="broke mid-stream") as info:
        await read_into(stream, received)
    assert len(received) >= 2
    assert not info.value.retryable
    assert upstream.stream.closed


@ALL_KINDS
async def test_a_connection_dropped_after_the_answer_is_complete_is_no_error(kind: str) -> None:
    upstream = Upstream(event_response(TEXT_EVENTS[kind]("a", "b"), drop=True))
    answer = await (await execute(make_provider(kind, upstream))).collect()
    assert answer.text == "ab"
    assert answer.usage is not None
    assert upstream.stream.closed


async def test_a_stream_that_failed_yields_nothing_more() -> None:
    events = [*TEXT_EVENTS["openai"]("a", finish=False), "{broken", *TEXT_EVENTS["openai"]("b")]
    upstream = Upstream(event_response(events, per_read=len(events)))
    stream = await execute(make_provider("openai", upstream))
    with pytest.raises(StreamError, match="sent malformed data"):
        await read_into(stream, [])
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()


async def test_a_connection_dropped_while_reading_a_whole_answer_is_retryable() -> None:
    upstream = Upstream(event_response(["{"], drop=True))
    with pytest.raises(StreamError, match="broke") as info:
        await execute(make_provider("openai", upstream), stream=False)
    assert info.value.retryable


@ALL_KINDS
@pytest.mark.parametrize("done", [True, False])
async def test_a_stream_that_ends_without_a_finish_reason_is_a_stream_error(
    kind: str, done: bool
) -> None:
    events = TEXT_EVENTS[kind]("a", finish=False)
    if done and kind != "anthropic":
        events.append("[DONE]")
    upstream = Upstream(event_response(events))
    stream = await execute(make_provider(kind, upstream))
    with pytest.raises(StreamError, match=r"without a .*reason") as info:
        async for _ in stream:
            pass
    assert not info.value.retryable
    assert upstream.stream.closed


@ALL_KINDS
async def test_closing_a_stream_early_closes_the_upstream_response(kind: str) -> None:
    upstream = Upstream(event_response(TEXT_EVENTS[kind]("a", "b", "c")))
    stream = await execute(make_provider(kind, upstream))
    await stream.__anext__()
    assert not upstream.stream.closed
    await stream.aclose()
    assert upstream.stream.closed
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()


@ALL_KINDS
async def test_cancelling_the_reader_closes_the_upstream_response_at_once(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    upstream = Upstream(event_response(TEXT_EVENTS[kind]("a", "b"), first_delay=0, delay=10))
    stream = await execute(make_provider(kind, upstream))
    with trio.move_on_after(15):
        async for _ in stream:
            pass
    # Nobody closed the stream: the cancelled read did.
    assert upstream.stream.closed
    assert upstream.stream.sent == 2


@ALL_KINDS
async def test_closing_a_complete_stream_reads_the_body_to_its_end_and_closes_it(
    kind: str,
) -> None:
    # Something after the end, in a read of its own: closing reads it, never decodes it.
    events = [*TEXT_EVENTS[kind]("a", "b"), "not decoded"]
    upstream = Upstream(event_response(events, per_read=len(events) - 1))
    async with await execute(make_provider(kind, upstream)) as stream:
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None
    assert upstream.stream.sent == len(upstream.stream.parts)
    assert upstream.stream.closed


# -- the opening chunk ---------------------------------------------------------------------


@ALL_KINDS
@pytest.mark.parametrize("named", [True, False])
async def test_an_error_right_after_the_opening_chunk_is_still_retryable(
    kind: str, named: bool
) -> None:
    # Nothing of the answer has been produced, so a retry or a fallback may still act.
    error: Any = {"error": {"message": "overloaded", "type": "server_error"}}
    if kind == "anthropic":
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "overloaded"}}
    upstream = Upstream(event_response([*OPENING[kind], ("error", error) if named else error]))
    stream = await execute(make_provider(kind, upstream))
    with pytest.raises(ProviderError, match="overloaded") as info:
        await stream.__anext__()
    assert info.value.retryable
    assert upstream.stream.closed


@ALL_KINDS
async def test_the_role_comes_with_the_first_chunk_that_carries_something(kind: str) -> None:
    upstream = Upstream(event_response(TEXT_EVENTS[kind]("a", "b")))
    chunks = [chunk async for chunk in await execute(make_provider(kind, upstream))]
    assert chunks[0].choices[0].delta == Delta(role="assistant", content="a")
    assert [chunk.text for chunk in chunks[:2]] == ["a", "b"]
    assert all(chunk.choices[0].delta.role is None for chunk in chunks[1:] if chunk.choices)


@ALL_KINDS
async def test_an_answer_without_text_still_has_its_role(kind: str) -> None:
    events = [*OPENING[kind], *TEXT_EVENTS[kind]()[len(OPENING[kind]) :]]
    if kind == "completions":
        events = completions_text_events()
    upstream = Upstream(event_response(events))
    chunks = [chunk async for chunk in await execute(make_provider(kind, upstream))]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].finish_reason == "stop"
    assert chunks[-1].usage is not None


@ALL_KINDS
async def test_the_first_token_timeout_waits_for_more_than_the_opening_chunk(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    events = [*OPENING[kind], *TEXT_EVENTS[kind]("a")[len(OPENING[kind]) :]]
    upstream = Upstream(event_response(events, per_read=len(OPENING[kind]), first_delay=0, delay=5))
    provider = make_provider(kind, upstream, first_token_timeout=2)
    with pytest.raises(GatewayTimeoutError, match="first") as info:
        await (await execute(provider)).collect()
    assert info.value.retryable
    assert trio.current_time() == pytest.approx(2)


@ALL_KINDS
async def test_a_stream_ends_as_soon_as_the_upstream_says_the_answer_is_complete(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    # The upstream says `[DONE]` (`message_stop`) but the body's end never comes.
    events = TEXT_EVENTS[kind]("a")
    upstream = Upstream(event_response(events, per_read=len(events), hang=True))
    stream = await execute(make_provider(kind, upstream, timeout=60))
    with trio.fail_after(1):
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None
    assert trio.current_time() == 0
    # Closing looks for the body's end a little while (so the connection could be reused),
    # then gives up and closes the connection.
    await stream.aclose()
    assert 0 < trio.current_time() < 1
    assert upstream.stream.closed


# -- construction --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://api.example.com/v1", "http://10.0.0.8:8000", "http://127.example.com"],
)
def test_plain_http_to_a_remote_host_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="refusing plain http://"):
        OpenAIProvider(url, api_key=KEY)
    assert OpenAIProvider(url, api_key=KEY, allow_insecure_http=True).base_url == url


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000/v1", "http://127.3.2.1", "http://localhost:1234", "http://[::1]:80"],
)
def test_plain_http_to_loopback_is_allowed(url: str) -> None:
    assert OpenAIProvider(url).base_url == url


@pytest.mark.parametrize("url", ["ftp://example.com", "example.com/v1", "https://"])
def test_a_base_url_that_is_not_http_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="base_url"):
        CompletionsProvider(url)


def test_loopback_hosts() -> None:
    assert is_loopback("localhost")
    assert is_loopback("127.255.0.1")
    assert is_loopback("[::1]")
    assert not is_loopback("::2")
    assert not is_loopback("localhost.example.com")


def config(kind: str = "openai", **fields: Any) -> ProviderConfig:
    fields.setdefault("base_url", "https://api.example.com/v1")
    return ProviderConfig(name=f"my-{kind}", kind=kind, **fields)


def test_a_missing_key_variable_is_a_config_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LLM_PROXY_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="`LLM_PROXY_TEST_KEY` is not set"):
        OpenAIProvider.from_config(config(api_key_env="LLM_PROXY_TEST_KEY"))


def test_a_remote_upstream_needs_a_key_variable() -> None:
    with pytest.raises(ConfigError, match="api_key_env"):
        AnthropicProvider.from_config(config("anthropic"))
    local = config("anthropic", base_url="http://127.0.0.1:9000")
    assert AnthropicProvider.from_config(local).name == "my-anthropic"


async def test_from_config_applies_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_PROXY_TEST_KEY", KEY)
    upstream = Upstream(event_response(TEXT_EVENTS["openai"]("a")))
    provider = OpenAIProvider.from_config(
        config(
            base_url=upstream.url + "/v1",
            api_key_env="LLM_PROXY_TEST_KEY",
            timeout=12.0,
            connect_timeout=2.0,
            first_token_timeout=3.0,
            pool_size=7,
            headers={"x-team": "blue"},
        )
    )
    assert (provider.name, provider.timeout, provider.first_token_timeout) == ("my-openai", 12, 3)
    assert provider.pool_size == 7  # tests/providers/test_sockets.py: the pool keeps to it
    assert provider.client.connect_timeout == 2.0
    await (await execute(provider)).collect()
    assert upstream.request.headers["authorization"] == f"Bearer {KEY}"
    assert upstream.request.headers["x-team"] == "blue"
    assert KEY not in repr(provider)


def test_unknown_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"my-openai.*unknown field `temperature`"):
        OpenAIProvider.from_config(config(options={"temperature": 1}, base_url="http://[::1]"))
    with pytest.raises(ConfigError, match=r"my-anthropic.*Expected `int`") as info:
        AnthropicProvider.from_config(
            config("anthropic", options={"max_tokens": "many"}, base_url="http://localhost")
        )
    assert info.value.param == "options.max_tokens"


async def test_one_client_serves_every_request_and_aclose_closes_it() -> None:
    upstream = Upstream(*(event_response(TEXT_EVENTS["openai"]("a")) for _ in range(3)))
    provider = make_provider("openai", upstream)
    client = provider.client
    for _ in range(3):
        await (await execute(provider)).collect()
    assert provider.client is client
    assert client.statistics() == PoolStatistics(connections=1, idle=1, in_use=0, waiting=0)
    assert len(upstream.requests) == 3
    await provider.aclose()
    assert client.statistics() == PoolStatistics(connections=0, idle=0, in_use=0, waiting=0)


@ALL_KINDS
async def test_a_cookie_the_upstream_sets_never_rides_along_on_another_request(kind: str) -> None:
    """One client serves every caller: an upstream's session cookie must not be shared."""
    cookie = {"set-cookie": "session=caller-one; Path=/"}
    upstream = Upstream(
        *(event_response(TEXT_EVENTS[kind]("hi"), headers=cookie) for _ in range(2))
    )
    provider = make_provider(kind, upstream)
    for _ in range(2):
        await (await execute(provider)).collect()
    assert [r.headers.get("cookie") for r in upstream.requests] == [None, None]
    await provider.aclose()


@ALL_KINDS
async def test_the_timeout_middlewares_limits_are_enforced_on_the_providers_own_reads(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    """With `Timeout` in front, a stall is cut off by the provider's read, not a second scope."""
    events = TEXT_EVENTS[kind]("a", "b", finish=False)
    upstream = Upstream(event_response(events, first_delay=0, delay=1, hang=True))
    provider = make_provider(kind, upstream, timeout=100)
    pipeline = Pipeline(provider, [Timeout(first_token=5, idle=3)])
    received: list[Chunk] = []
    with (
        trio.fail_after(1000),
        pytest.raises(GatewayTimeoutError, match=r"for 3s \(idle timeout\)"),
    ):
        async with pipeline.stream(make_request()) as stream:
            await read_into(stream, received)
    assert [chunk.text for chunk in received] == ["a", "b"]
    assert trio.current_time() == pytest.approx(1 * (len(events) - 1) + 3)
    assert upstream.stream.closed


@ALL_KINDS
async def test_the_first_token_limit_offered_by_the_middleware_is_enforced(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    upstream = Upstream(event_response(TEXT_EVENTS[kind]("a"), first_delay=50))
    ctx = Context()
    limits = ctx.stream_limits = StreamLimits(trio.current_time() + 7, None)
    stream = await execute(make_provider(kind, upstream), ctx=ctx)
    assert limits.enforced
    with pytest.raises(GatewayTimeoutError, match="first-token timeout") as info:
        await stream.collect()
    assert trio.current_time() == pytest.approx(7)
    assert info.value.retryable


@ALL_KINDS
async def test_an_upstream_silent_past_the_offered_first_token_limit_is_cut_off(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    """The limit also bounds the wait for the answer's headers, with a clear message."""

    async def never(request: Received) -> Reply:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    ctx = Context()
    ctx.stream_limits = StreamLimits(trio.current_time() + 4, None)
    with pytest.raises(GatewayTimeoutError, match="no answer before the first-token timeout"):
        await execute(make_provider(kind, Upstream(never)), ctx=ctx)
    assert trio.current_time() == pytest.approx(4)


@ALL_KINDS
async def test_an_error_body_that_stalls_is_read_for_the_timeout_at_most(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    """A stream has no deadline of its own; reading its error body still ends."""
    stalled = Reply(500, body=ScriptedBody([b'{"error": {"mess'], hang=True))
    upstream = Upstream(stalled)
    with (
        trio.fail_after(1000),
        pytest.raises(ProviderError, match="the upstream answered HTTP 500") as info,
    ):
        await execute(make_provider(kind, upstream, timeout=5))
    assert info.value.upstream_status == 500
    assert trio.current_time() == pytest.approx(5)
    assert upstream.stream.closed


@ALL_KINDS
@pytest.mark.parametrize(
    ("provider_timeout", "cut_at", "message"),
    [
        # The middleware's first-token scope encloses the send and passes first.
        (100, 5, r"no first token within 5 s \(first-token timeout\)"),
        # The provider's own deadline passes first: its scope, its message.
        (3, 3, "the upstream did not answer before the deadline"),
    ],
)
async def test_a_whole_answer_not_sent_is_cut_at_the_earlier_of_both_limits(
    kind: str,
    provider_timeout: float,
    cut_at: float,
    message: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def never(request: Received) -> Reply:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    provider = make_provider(kind, Upstream(never), timeout=provider_timeout)
    pipeline = Pipeline(provider, [Timeout(first_token=5)])
    with trio.fail_after(1000), pytest.raises(GatewayTimeoutError, match=message):
        await pipeline.complete(make_request(stream=False))
    assert trio.current_time() == pytest.approx(cut_at)
