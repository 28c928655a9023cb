"""Access log: one event per request however it ends, and no secret in any rendered line."""

from __future__ import annotations

import io
import json
import random
from typing import Any, Literal

import pytest
import structlog
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from middlewares import (
    AccessLog,
    Fallback,
    LogConfig,
    Metrics,
    MetricsMiddleware,
    Retry,
    SecretRedactor,
    Timeout,
)
from pipeline import (
    AuthenticationError,
    Context,
    Handler,
    Middleware,
    NotFoundError,
    Pipeline,
    ProviderError,
    Request,
    ResponseStream,
    Route,
    Router,
    StreamError,
)
from providers import MockProvider

from ..conftest import Lines, make_request
from .test_retry import Breaking


def the_event(lines: Lines) -> dict[str, Any]:
    """The one event written; fails if there is not exactly one."""
    events = lines.events()
    assert len(events) == 1, events
    return events[0]


async def test_a_complete_request_writes_one_event_with_every_field(
    lines: Lines, autojump_clock: trio.testing.MockClock
) -> None:
    provider = MockProvider("hello there", chunks=3, ttft=0.25, chunk_delay=0.5)
    ctx = Context(request_id="req_1", key_id="team-a")
    ctx.cache_status = "miss"
    ctx.provider, ctx.upstream_model = "mock", "mock-up"
    await Pipeline(provider, [AccessLog()]).complete(make_request(model="mock-1"), ctx)
    event = the_event(lines)
    assert ctx.usage is not None
    assert event == {
        "event": "request",
        "level": "info",
        "timestamp": event["timestamp"],
        "request_id": "req_1",
        "api": "chat",
        "key_id": "team-a",
        "model": "mock-1",
        "upstream_model": "mock-up",
        "provider": "mock",
        "status": 200,
        "error": None,
        "error_message": None,
        "stream": True,
        "outcome": "complete",
        # ttft 0.25, then two more content chunks, the finish, the usage and the end of the
        # stream, 0.5 s apart.
        "latency_ms": 2750.0,
        "ttft_ms": 250.0,
        "chunks": 5,
        "prompt_tokens": ctx.usage.prompt_tokens,
        "completion_tokens": ctx.usage.completion_tokens,
        "cache": "miss",
        "retries": 0,
        "fallback": None,
        "store_errors": None,
    }


async def test_a_request_rejected_before_any_stream_is_logged_as_an_error(lines: Lines) -> None:
    async def reject(request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        raise AuthenticationError("Invalid API key.")

    provider = MockProvider()
    with pytest.raises(AuthenticationError, match="Invalid API key"):
        await Pipeline(provider, [AccessLog(), reject]).handle(make_request(stream=False))
    event = the_event(lines)
    assert event["level"] == "info"
    assert (event["status"], event["error"], event["outcome"]) == (
        401,
        "authentication_error",
        "error",
    )
    assert (event["chunks"], event["stream"], event["ttft_ms"]) == (0, False, None)
    assert provider.calls == 0


async def test_a_stream_that_breaks_is_logged_once_as_an_error(lines: Lines) -> None:
    provider = MockProvider(chunks=5, fail_after=2)
    with pytest.raises(StreamError, match="broke after 2 chunks"):
        await Pipeline(provider, [AccessLog()]).complete(make_request())
    event = the_event(lines)
    assert event["level"] == "warning"
    assert (event["status"], event["error"], event["outcome"], event["chunks"]) == (
        502,
        "upstream_error",
        "error",
        2,
    )
    assert event["error_message"] == "mock stream broke after 2 chunks"


async def test_other_exceptions_are_logged_as_500_with_their_class(lines: Lines) -> None:
    def broken(request: Request, ctx: Context) -> str:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match=r"^bug$"):
        await Pipeline(MockProvider(handler=broken), [AccessLog()]).handle(make_request())
    event = the_event(lines)
    assert (event["status"], event["error"], event["outcome"]) == (500, "RuntimeError", "error")


async def test_a_stream_closed_early_is_logged_once_as_cancelled(lines: Lines) -> None:
    provider = MockProvider(chunks=10)
    async with Pipeline(provider, [AccessLog()]).stream(make_request()) as stream:
        await stream.__anext__()
        await stream.__anext__()
    event = the_event(lines)
    assert (event["status"], event["outcome"], event["chunks"], event["error"]) == (
        499,
        "cancelled",
        2,
        None,
    )
    assert provider.open_streams == 0


async def test_a_request_cancelled_before_its_stream_is_logged_as_cancelled(
    lines: Lines, autojump_clock: trio.testing.MockClock
) -> None:
    async def slow(request: Request, ctx: Context) -> str:
        await trio.sleep(10)
        return "never"

    with trio.move_on_after(1):
        await Pipeline(MockProvider(handler=slow), [AccessLog()]).handle(make_request())
    event = the_event(lines)
    assert (event["status"], event["outcome"], event["chunks"]) == (499, "cancelled", 0)
    assert event["latency_ms"] == 1000.0


async def test_each_request_writes_exactly_one_event(lines: Lines) -> None:
    pipeline = Pipeline(MockProvider(chunks=4), [AccessLog()])
    ids = [f"req_{i}" for i in range(20)]
    for request_id in ids:
        await pipeline.complete(make_request(), Context(request_id=request_id))
    assert [e["request_id"] for e in lines.events()] == ids


async def test_the_level_filters_request_events(autojump_clock: trio.testing.MockClock) -> None:
    out = io.StringIO()
    log = AccessLog.from_config(LogConfig(format="json", level="warning"), file=out)
    try:
        pipeline = Pipeline(MockProvider(fail_after=1), [log])
        with pytest.raises(StreamError, match="broke after 1 chunks"):
            await pipeline.complete(make_request())
        await Pipeline(MockProvider(), [log]).complete(make_request())
        events = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [(e["status"], e["level"]) for e in events] == [(502, "warning")]
    finally:
        structlog.reset_defaults()


async def test_console_format_writes_one_readable_line() -> None:
    out = io.StringIO()
    log = AccessLog.from_config(LogConfig(format="console", level="info"), file=out)
    try:
        await Pipeline(MockProvider(), [log]).complete(make_request(), Context(request_id="r-9"))
    finally:
        structlog.reset_defaults()
    [line] = out.getvalue().splitlines()
    assert "request" in line
    assert "request_id=r-9" in line
    assert "status=200" in line


# -- no secret reaches a log line ----------------------------------------------------------

CLIENT_KEY = "sk-proj-Z7x9Qw2Lm4Np6Rt8Vb0Xc1Yd3Fg5Hj7K"
ANTHROPIC_KEY = "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
OPAQUE_KEY = "p4ssw0rd-that-looks-like-nothing"
"""A configured key with no telltale shape: only registering it keeps it out of the logs."""


@pytest.mark.parametrize("format", ["json", "console"])
async def test_no_api_key_reaches_any_log_line(format: Literal["json", "console"]) -> None:
    out = io.StringIO()
    log = AccessLog.from_config(LogConfig(format=format), secrets=[OPAQUE_KEY], file=out)
    logger = structlog.get_logger("auth")

    async def auth(request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        # A careless middleware that logs everything it was given.
        logger.info("auth", headers=dict(ctx.headers), raw=[(b"Authorization", b"whatever")])
        ctx.key_id = "team-a"
        if ctx.headers.get("x-api-key") == OPAQUE_KEY:
            raise AuthenticationError(f"Key {OPAQUE_KEY} is revoked.")
        return await call_next(request, ctx)

    upstream_error = ProviderError(
        f"Incorrect API key provided: {CLIENT_KEY}. Also tried {ANTHROPIC_KEY}.",
        upstream_status=401,
    )
    try:
        pipeline = Pipeline(MockProvider(error=upstream_error), [log, auth])
        headers = {"authorization": f"Bearer {CLIENT_KEY}", "x-api-key": ANTHROPIC_KEY}
        with pytest.raises(ProviderError, match="Incorrect API key provided"):
            await pipeline.handle(make_request(), Context(headers=headers))
        with pytest.raises(AuthenticationError, match="is revoked"):
            await pipeline.handle(make_request(), Context(headers={"x-api-key": OPAQUE_KEY}))
        try:
            raise ProviderError(f"upstream said: bad key {CLIENT_KEY}")
        except ProviderError:
            logger.exception("provider call failed", api_key=OPAQUE_KEY)
    finally:
        structlog.reset_defaults()
    text = out.getvalue()
    assert text.count("request") >= 2  # the events were written
    assert "team-a" in text
    for secret in (CLIENT_KEY, ANTHROPIC_KEY, OPAQUE_KEY):
        assert secret not in text
        assert secret[8:24] not in text  # not even a fragment
    assert "Incorrect API key provided: [REDACTED]" in text


# -- the redactor on its own ---------------------------------------------------------------


def redact(redactor: SecretRedactor, **event: Any) -> dict[str, Any]:
    return dict(redactor(None, "info", event))


def test_values_under_secret_keys_are_redacted_at_any_depth_and_in_any_case() -> None:
    event = redact(
        SecretRedactor(),
        Authorization="x",
        request={
            "headers": {"X-Api-Key": "x", "Content-Type": "json", "Cookie": "x"},
            "body": [{"password": "x", "api_key": "x", "apiKey": "x", "openai_api_key": "x"}],
            "auth": ("token", "x"),
            "client_secret": 1234,
        },
        key="x",
        key_id="team-a",
        prompt_tokens=12,
        max_tokens=100,
    )
    assert event == {
        "Authorization": "[REDACTED]",
        "request": {
            "headers": {"X-Api-Key": "[REDACTED]", "Content-Type": "json", "Cookie": "[REDACTED]"},
            "body": [
                {
                    "password": "[REDACTED]",
                    "api_key": "[REDACTED]",
                    "apiKey": "[REDACTED]",
                    "openai_api_key": "[REDACTED]",
                }
            ],
            "auth": ["token", "[REDACTED]"],
            "client_secret": "[REDACTED]",
        },
        "key": "[REDACTED]",
        "key_id": "team-a",
        "prompt_tokens": 12,
        "max_tokens": 100,
    }


def test_the_logged_objects_are_left_unchanged() -> None:
    headers = {"authorization": "Bearer abc", "accept": "text/event-stream"}
    pairs = [(b"x-api-key", b"abc")]
    event = redact(SecretRedactor(), headers=headers, pairs=pairs)
    assert event["headers"]["authorization"] == "[REDACTED]"
    assert event["pairs"] == [["x-api-key", "[REDACTED]"]]
    assert headers == {"authorization": "Bearer abc", "accept": "text/event-stream"}
    assert pairs == [(b"x-api-key", b"abc")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Bearer abc.def-ghi", "[REDACTED]"),
        ("header was 'bearer  tok_123', rejected", "header was '[REDACTED]', rejected"),
        ("Basic dXNlcjpwYXNz", "[REDACTED]"),
        (f"key={CLIENT_KEY}", "key=[REDACTED]"),
        (f"{ANTHROPIC_KEY} is invalid", "[REDACTED] is invalid"),
        ("google AIzaSyA1234567890abcdefghijklmnopqrstuv", "google [REDACTED]"),
        ("ask-forgiveness task-force", "ask-forgiveness task-force"),
        ("a risk-assessment of sk-short", "a risk-assessment of sk-short"),
    ],
)
def test_strings_that_look_like_credentials_are_redacted(text: str, expected: str) -> None:
    assert SecretRedactor().redact(text) == expected


def test_registered_secrets_are_scrubbed_from_any_value() -> None:
    redactor = SecretRedactor(["abc-123-opaque"])
    redactor.add("longer-abc-123-opaque-value", "")
    event = redact(
        redactor,
        event="key longer-abc-123-opaque-value failed",
        note=b"raw abc-123-opaque",
        error=ValueError("abc-123-opaque rejected"),
    )
    assert event == {
        "event": "key [REDACTED] failed",
        "note": "raw [REDACTED]",
        "error": "[REDACTED] rejected",
    }


@given(
    secret=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=8, max_size=40),
    before=st.text(max_size=30),
    after=st.text(max_size=30),
)
def test_a_registered_secret_never_survives_rendering(secret: str, before: str, after: str) -> None:
    redactor = SecretRedactor([secret])
    event = redact(redactor, event=before + secret + after, nested={"x": [after + secret]})
    assert secret not in json.dumps(event)


@given(
    body=st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"),
    prefix=st.sampled_from(["sk-", "sk-ant-", "sk-proj-"]),
    before=st.text(max_size=30).map(lambda s: s + " "),
    after=st.text(max_size=30).map(lambda s: " " + s),
)
def test_an_unregistered_openai_or_anthropic_key_never_survives(
    body: str, prefix: str, before: str, after: str
) -> None:
    key = prefix + "A1b2C3d4" + body
    assert key not in SecretRedactor().redact(before + key + after)


# -- the five together, in the recommended order -------------------------------------------


def stack(metrics: Metrics, **providers: MockProvider) -> Pipeline:
    """Access log, metrics, retry, fallback (main -> backup), timeout, then a router."""
    router = Router({model: Route(p, f"{model}-up") for model, p in providers.items()})
    middlewares: list[Middleware] = [
        AccessLog(),
        MetricsMiddleware(metrics),
        Retry(max_attempts=2, base_delay=0.5, rng=random.Random(5)),
        Fallback({"main": ["backup"]}),
        Timeout(total=60, first_token=5, idle=5),
    ]
    return Pipeline(router, middlewares)


def requests_with_status(metrics: Metrics, model: str, status: int) -> float | None:
    return metrics.registry.get_sample_value(
        "llm_proxy_requests_total",
        {"model": model, "key_id": "none", "status": str(status), "api": "chat"},
    )


async def test_stack_a_failure_after_the_first_chunk_is_not_retried_and_is_logged_as_an_error(
    lines: Lines, autojump_clock: trio.testing.MockClock
) -> None:
    metrics = Metrics()
    main, backup = Breaking(breaks=5, after=2), MockProvider()
    received = 0
    with pytest.raises(ProviderError, match="connection reset"):
        async with stack(metrics, main=main, backup=backup).stream(
            make_request(model="main")
        ) as stream:
            async for _ in stream:
                received += 1
    assert (received, main.calls, backup.calls, main.open_streams) == (2, 1, 0, 0)
    event = the_event(lines)
    assert (event["outcome"], event["status"], event["error"]) == ("error", 502, "upstream_error")
    assert (event["chunks"], event["retries"], event["provider"]) == (2, 0, "mock")
    assert requests_with_status(metrics, "main", 502) == 1


async def test_stack_a_retry_then_success_records_one_retry_in_log_and_metrics(
    lines: Lines, autojump_clock: trio.testing.MockClock
) -> None:
    metrics = Metrics()
    flaky = ProviderError("overloaded", upstream_status=503, provider="solo-up")
    solo = MockProvider("second try", error=flaky, error_count=1)
    ctx = Context()
    answer = await stack(metrics, solo=solo).complete(make_request(model="solo"), ctx)
    assert answer.text == "second try"
    event = the_event(lines)
    assert (event["outcome"], event["status"], event["retries"]) == ("complete", 200, 1)
    assert event["upstream_model"] == "solo-up"
    assert metrics.registry.get_sample_value("llm_proxy_retries_total", {"model": "solo"}) == 1
    upstream = {"provider": "solo-up", "upstream_status": "503"}
    assert metrics.registry.get_sample_value("llm_proxy_upstream_errors_total", upstream) == 1
    assert requests_with_status(metrics, "solo", 200) == 1


async def test_stack_cancellation_mid_stream_is_logged_and_releases_the_provider_stream(
    lines: Lines, autojump_clock: trio.testing.MockClock
) -> None:
    metrics = Metrics()
    main = MockProvider(chunks=10, chunk_delay=1)
    received = 0
    with trio.move_on_after(2.5):
        async with stack(metrics, main=main, backup=MockProvider()).stream(
            make_request(model="main")
        ) as stream:
            async for _ in stream:
                received += 1
    assert received == 3  # chunks at t=0, 1, 2
    assert (main.open_streams, main.closed_streams) == (0, 1)
    event = the_event(lines)
    assert (event["outcome"], event["status"], event["chunks"]) == ("cancelled", 499, 3)
    assert event["latency_ms"] == 2500.0
    assert requests_with_status(metrics, "main", 499) == 1


async def test_stack_a_slow_first_token_falls_back_and_the_log_says_so(
    lines: Lines, autojump_clock: trio.testing.MockClock
) -> None:
    metrics = Metrics()
    main, backup = MockProvider(ttft=30, name="slow"), MockProvider("rescued", name="spare")
    answer = await stack(metrics, main=main, backup=backup).complete(make_request(model="main"))
    assert answer.text == "rescued"
    assert main.open_streams == 0
    event = the_event(lines)
    assert (event["status"], event["retries"], event["fallback"]) == (200, 1, "backup")
    assert (event["provider"], event["upstream_model"]) == ("spare", "backup-up")
    assert event["ttft_ms"] == 5000.0  # the first-token limit, then the backup's first chunk


async def test_stack_when_everything_fails_every_attempt_is_counted_once(
    lines: Lines, autojump_clock: trio.testing.MockClock
) -> None:
    metrics = Metrics()
    main = MockProvider(error=ProviderError("main down", upstream_status=500, provider="m"))
    backup = MockProvider(error=ProviderError("backup down", upstream_status=503, provider="b"))
    with pytest.raises(ProviderError, match="backup down"):
        await stack(metrics, main=main, backup=backup).handle(make_request(model="main"))
    assert (main.calls, backup.calls) == (2, 2)
    event = the_event(lines)
    # main -> backup, then a retry of the whole line: main -> backup.
    assert (event["status"], event["retries"], event["error_message"]) == (503, 3, "backup down")

    def upstream_errors(provider: str, status: str) -> float | None:
        labels = {"provider": provider, "upstream_status": status}
        return metrics.registry.get_sample_value("llm_proxy_upstream_errors_total", labels)

    assert (upstream_errors("m", "500"), upstream_errors("b", "503")) == (2, 2)


async def test_a_huge_unknown_model_name_is_clipped_in_the_404_and_the_log(lines: Lines) -> None:
    name = "m" * 100_000
    pipeline = Pipeline(Router({"known": Route(MockProvider(), "up")}), [AccessLog()])
    with pytest.raises(NotFoundError) as info:
        await pipeline.complete(make_request(model=name), Context())
    assert info.value.status == 404
    assert f"`{'m' * 100}...`" in info.value.message
    assert len(info.value.message) < 200
    event = the_event(lines)
    assert event["model"] == "m" * 100 + "..."
    assert len(event["error_message"]) < 200
