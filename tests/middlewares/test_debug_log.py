"""The `debug` log level: the decisions an operator needs to debug a request, no secret.

Each line carries the request id; routing, each retry and its reason, each fallback, each
cache decision and each failed store call are logged. Keys, header values and message
content never are, and above `debug` none of these lines is written.
"""

from __future__ import annotations

import io
import json
import logging
import random
from collections.abc import Iterator
from typing import Any, Literal

import pytest
import structlog
import trio.testing

from middlewares import AccessLog, Cache, Fallback, MemoryStore, Retry, configure_logging
from pipeline import Context, Middleware, Pipeline, ProviderError, Route, Router
from providers import MockProvider

from ..conftest import make_request
from .conftest import FlakyStore

CLIENT_KEY = "sk-proj-Z7x9Qw2Lm4Np6Rt8Vb0Xc1Yd3Fg5Hj7K"
OPAQUE_KEY = "p4ssw0rd-that-looks-like-nothing"
CONTENT = "the launch code is 0451"
"""Message content: the upstream echoes it in its error, and no debug line may repeat it."""


def unavailable(name: str) -> ProviderError:
    return ProviderError(f"{name} cannot answer `{CONTENT}`", upstream_status=503, provider=name)


STATUS = unavailable("any").status
"""The proxy's status for the upstream's 503."""


def stack(store: MemoryStore | None = None) -> Pipeline:
    """Cache, retry and fallback over three models: flaky (fails once), main (always
    fails, falls back to backup) and backup."""
    flaky = MockProvider(
        "flaky answer", name="flaky-p", error=unavailable("flaky-p"), error_count=1
    )
    main = MockProvider(name="main-p", error=unavailable("main-p"))
    backup = MockProvider("backup answer", name="backup-p")
    router = Router(
        {
            "flaky": Route(flaky, "flaky-up"),
            "main": Route(main, "main-up"),
            "backup": Route(backup, "backup-up"),
        }
    )
    middlewares: list[Middleware] = [
        AccessLog(),
        Cache(store if store is not None else MemoryStore()),
        Retry(max_attempts=2, base_delay=0.2, rng=random.Random(7)),
        Fallback({"main": ["backup"]}),
    ]
    return Pipeline(router, middlewares)


def context(request_id: str) -> Context:
    return Context(
        request_id=request_id,
        headers={"authorization": f"Bearer {CLIENT_KEY}", "x-api-key": OPAQUE_KEY},
    )


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging(format="json", level="debug", secrets=[OPAQUE_KEY], file=out)
    try:
        yield out
    finally:
        structlog.reset_defaults()


def debug_events(out: io.StringIO, request_id: str) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    return [e for e in events if e["level"] == "debug" and e.get("request_id") == request_id]


def pick(event: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: event.get(name) for name in ("event", *names)}


async def test_a_retried_then_cached_request_logs_each_decision(
    logged: io.StringIO, autojump_clock: trio.testing.MockClock
) -> None:
    pipeline = stack()
    request = make_request(CONTENT, model="flaky", stream=False)
    assert (await pipeline.complete(request, context("r-1"))).text == "flaky answer"
    assert (await pipeline.complete(request, context("r-2"))).text == "flaky answer"

    first = debug_events(logged, "r-1")
    assert [e["event"] for e in first] == ["cache", "retry", "route", "cache_store"]
    cache, retry, route, store = first
    assert pick(cache, "status", "reason") == {
        "event": "cache",
        "status": "miss",
        "reason": "no stored answer",
    }
    assert pick(retry, "attempt", "max_attempts", "error", "status", "provider") == {
        "event": "retry",
        "attempt": 1,
        "max_attempts": 2,
        "error": "upstream_error",
        "status": STATUS,
        "provider": "flaky-p",
    }
    assert 0 <= retry["delay"] <= 0.2
    assert pick(route, "model", "provider", "upstream_model", "cache") == {
        "event": "route",
        "model": "flaky",
        "provider": "flaky-p",
        "upstream_model": "flaky-up",
        "cache": "miss",
    }
    assert pick(store, "stored", "reason") == {
        "event": "cache_store",
        "stored": True,
        "reason": None,
    }

    second = debug_events(logged, "r-2")
    assert [pick(e, "status", "reason", "cache") for e in second] == [
        {"event": "cache", "status": "hit", "reason": "stored answer", "cache": None},
        {"event": "route", "status": None, "reason": None, "cache": "hit"},
    ]


async def test_a_fallen_back_request_logs_the_fallback_and_why_it_was_not_stored(
    logged: io.StringIO, autojump_clock: trio.testing.MockClock
) -> None:
    pipeline = stack()
    answer = await pipeline.complete(make_request(CONTENT, model="main"), context("r-3"))
    assert answer.text == "backup answer"

    events = debug_events(logged, "r-3")
    assert [e["event"] for e in events] == ["cache", "fallback", "route", "cache_store"]
    _, fallback, route, store = events
    assert pick(fallback, "failed", "error", "status", "to") == {
        "event": "fallback",
        "failed": "main",
        "error": "upstream_error",
        "status": STATUS,
        "to": "backup",
    }
    assert pick(route, "provider", "upstream_model", "fallback") == {
        "event": "route",
        "provider": "backup-p",
        "upstream_model": "backup-up",
        "fallback": "backup",
    }
    assert pick(store, "stored", "reason") == {
        "event": "cache_store",
        "stored": False,
        "reason": "answered by a fallback, not the asked model",
    }


async def test_a_request_that_cannot_be_retried_says_why(
    logged: io.StringIO, autojump_clock: trio.testing.MockClock
) -> None:
    main = MockProvider(name="main-p", error=unavailable("main-p"))
    pipeline = Pipeline(main, [Retry(max_attempts=2, base_delay=0.2)])
    with pytest.raises(ProviderError):
        await pipeline.complete(make_request(CONTENT), context("r-4"))
    assert [pick(e, "attempt", "status", "reason") for e in debug_events(logged, "r-4")] == [
        {"event": "retry", "attempt": 1, "status": STATUS, "reason": None},
        {"event": "retry_stop", "attempt": 2, "status": STATUS, "reason": "attempts exhausted"},
    ]


async def test_failed_store_calls_are_logged_each_time(logged: io.StringIO) -> None:
    pipeline = stack(FlakyStore())
    for request_id in ("r-5", "r-6"):  # the warning is rate-limited; the debug line is not
        await pipeline.complete(make_request(CONTENT, model="backup"), context(request_id))
        failed = [e for e in debug_events(logged, request_id) if e["event"] == "store_call_failed"]
        assert [pick(e, "middleware", "operation", "policy", "error") for e in failed] == [
            {
                "event": "store_call_failed",
                "middleware": "cache",
                "operation": operation,
                "policy": "fail_open",
                "error": "StoreError",
            }
            # The lookup takes the lock in the same call: one failure for both.
            for operation in ("read", "write")
        ]


async def test_no_secret_or_content_reaches_a_debug_line(
    logged: io.StringIO, autojump_clock: trio.testing.MockClock
) -> None:
    pipeline = stack(FlakyStore())
    for model in ("flaky", "main", "flaky"):
        await pipeline.complete(make_request(CONTENT, model=model), context("r-7"))
    text = logged.getvalue()
    assert '"level":"debug"' in text
    for secret in (CLIENT_KEY, OPAQUE_KEY, CONTENT, "launch code", "Bearer"):
        assert secret not in text


@pytest.mark.parametrize("level", ["info", "warning"])
async def test_above_debug_nothing_is_written_and_the_calls_return_at_once(
    level: Literal["info", "warning"], autojump_clock: trio.testing.MockClock
) -> None:
    out = io.StringIO()
    configure_logging(format="json", level=level, file=out)
    try:
        # The filtering logger's debug method is a no-op: no event is built at all.
        assert not structlog.get_logger("llm_proxy.retry").is_enabled_for(logging.DEBUG)
        pipeline = stack()
        for model in ("flaky", "main", "flaky"):
            await pipeline.complete(make_request(CONTENT, model=model), context("r-8"))
    finally:
        structlog.reset_defaults()
    levels = {json.loads(line)["level"] for line in out.getvalue().splitlines()}
    assert levels <= ({"info", "warning"} if level == "info" else {"warning"})
