"""Retry: backoff with full jitter, Retry-After, limits, and never after the first chunk."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
import trio
import trio.testing

from middlewares import Retry, RetryConfig
from pipeline import (
    Chunk,
    Context,
    Handler,
    Middleware,
    Pipeline,
    ProviderError,
    RateLimitError,
    Request,
    ResponseStream,
    StreamError,
)
from providers import MockProvider

from ..conftest import make_request


class _BreakAfter:
    """A source that passes `after` chunks of `inner` through, then raises `error`."""

    def __init__(self, inner: ResponseStream, after: int, error: ProviderError) -> None:
        self.inner = inner
        self.after = after
        self.error = error
        self.passed = 0

    async def __anext__(self) -> Chunk:
        if self.passed == self.after:
            await trio.sleep(0.5)
            raise self.error
        self.passed += 1
        return await self.inner.__anext__()


class Breaking(MockProvider):
    """A mock whose first `breaks` streams raise a retryable error after `after` chunks.

    The broken streams hold a real mock stream, so `open_streams` shows whether they were
    closed.
    """

    def __init__(self, text: str = "ok", *, breaks: int, after: int = 0, **options: Any) -> None:
        super().__init__(text, **options)
        self.breaks = breaks
        self.after = after

    async def execute(self, request: Request, ctx: Context) -> ResponseStream:
        stream = await super().execute(request, ctx)
        if self.calls > self.breaks:
            return stream
        error = ProviderError("upstream connection reset", provider=self.name)
        return ResponseStream(_BreakAfter(stream, self.after, error), on_close=stream.aclose)


def call_times(times: list[float]) -> Middleware:
    """A middleware, placed after Retry, that records when each attempt starts."""

    async def record(request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        times.append(trio.current_time())
        return await call_next(request, ctx)

    return record


def unavailable(retry_after: float | None = None) -> ProviderError:
    return ProviderError(
        "upstream overloaded", upstream_status=503, provider="mock", retry_after=retry_after
    )


async def test_cancellation_during_backoff_leaves_nothing_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = Breaking(breaks=10)
    pipeline = Pipeline(
        provider, [Retry(max_attempts=5, base_delay=60, max_delay=60, rng=random.Random(1))]
    )
    with trio.move_on_after(5) as scope:
        await pipeline.handle(make_request())
    assert scope.cancelled_caught
    assert provider.calls == 1
    assert provider.open_streams == 0


async def test_retries_until_success_with_full_jitter_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = MockProvider("fine", error=unavailable(), error_count=3)
    times: list[float] = []
    retry = Retry(max_attempts=4, base_delay=1, max_delay=3, rng=random.Random(42))
    ctx = Context()
    answer = await Pipeline(provider, [retry, call_times(times)]).complete(make_request(), ctx)
    assert answer.text == "fine"
    assert provider.calls == 4
    assert ctx.retries == 3
    assert len(ctx.retried_errors) == 3
    expected = random.Random(42)
    # Ceilings 1, 2, 4 capped at max_delay 3.
    delays = [expected.uniform(0, 1), expected.uniform(0, 2), expected.uniform(0, 3)]
    waits = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert waits == pytest.approx(delays)


async def test_gives_up_after_max_attempts_with_the_last_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = MockProvider(error=unavailable())
    ctx = Context()
    with pytest.raises(ProviderError, match="upstream overloaded"):
        await Pipeline(provider, [Retry(max_attempts=3, base_delay=0.1)]).handle(
            make_request(), ctx
        )
    assert provider.calls == 3
    assert ctx.retries == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_non_retryable_errors_are_raised_at_once(status: int) -> None:
    provider = MockProvider(error=ProviderError("no", upstream_status=status))
    ctx = Context()
    with pytest.raises(ProviderError, match=r"\bno$") as info:
        await Pipeline(provider, [Retry()]).handle(make_request(), ctx)
    assert info.value.upstream_status == status
    assert provider.calls == 1
    assert ctx.retries == 0


async def test_other_exceptions_pass_through_untouched() -> None:
    def broken(request: Request, ctx: Context) -> str:
        raise RuntimeError("a bug, not an upstream failure")

    provider = MockProvider(handler=broken)
    with pytest.raises(RuntimeError, match="a bug"):
        await Pipeline(provider, [Retry()]).handle(make_request())
    assert provider.calls == 1


async def test_retry_after_is_honoured_exactly(autojump_clock: trio.testing.MockClock) -> None:
    limited = RateLimitError("slow down", retry_after=7)
    provider = MockProvider(error=limited, error_count=1)
    times: list[float] = []
    await Pipeline(provider, [Retry(base_delay=0.1), call_times(times)]).complete(make_request())
    assert times[1] - times[0] == pytest.approx(7)


async def test_a_retry_after_beyond_the_cap_is_raised_not_waited_for(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = MockProvider(error=RateLimitError("come back in an hour", retry_after=3600))
    start = trio.current_time()
    with pytest.raises(RateLimitError, match="come back in an hour") as info:
        await Pipeline(provider, [Retry(max_retry_after=30)]).handle(make_request())
    assert info.value.retry_after == 3600
    assert provider.calls == 1
    assert trio.current_time() == start


async def test_no_retry_starts_after_the_retry_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = MockProvider(error=unavailable(retry_after=2))
    times: list[float] = []
    retry = Retry(max_attempts=10, deadline=5)
    with pytest.raises(ProviderError, match="upstream overloaded"):
        await Pipeline(provider, [retry, call_times(times)]).handle(make_request())
    start = times[0]
    assert [t - start for t in times] == pytest.approx([0, 2, 4])  # the next would start at 6


async def test_no_retry_starts_after_the_context_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = MockProvider(error=unavailable(retry_after=2))
    ctx = Context(deadline=trio.current_time() + 3)
    with pytest.raises(ProviderError, match="upstream overloaded"):
        await Pipeline(provider, [Retry(max_attempts=10)]).handle(make_request(), ctx)
    assert provider.calls == 2


async def test_a_stream_that_breaks_before_its_first_chunk_is_closed_and_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = Breaking("second time lucky", breaks=1)
    ctx = Context()
    answer = await Pipeline(provider, [Retry(base_delay=0.1)]).complete(make_request(), ctx)
    assert answer.text == "second time lucky"
    assert provider.calls == 2
    assert ctx.retries == 1
    assert provider.open_streams == 0
    assert provider.closed_streams == 2


async def test_a_non_retryable_break_before_the_first_chunk_is_raised() -> None:
    provider = MockProvider(fail_after=0)
    with pytest.raises(StreamError, match="broke after 0 chunks"):
        await Pipeline(provider, [Retry()]).handle(make_request())
    assert provider.calls == 1
    assert provider.open_streams == 0


async def test_nothing_is_retried_once_a_chunk_has_been_delivered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The error is retryable, but the client has already seen part of the answer.
    provider = Breaking(breaks=5, after=2)
    ctx = Context()
    received = 0
    with pytest.raises(ProviderError, match="connection reset"):
        async with Pipeline(provider, [Retry()]).stream(make_request(), ctx) as stream:
            async for _ in stream:
                received += 1
    assert received == 2
    assert provider.calls == 1
    assert ctx.retries == 0
    assert provider.open_streams == 0


async def test_the_first_chunk_is_delivered_once(autojump_clock: trio.testing.MockClock) -> None:
    # Retry peeks at the first chunk; the consumer still receives every chunk exactly once.
    provider = MockProvider("abcdef", chunks=3)
    answer = await Pipeline(provider, [Retry()]).complete(make_request())
    assert answer.text == "abcdef"


async def test_from_config_takes_the_retry_section(autojump_clock: trio.testing.MockClock) -> None:
    config = RetryConfig(
        max_attempts=2, base_delay=0.25, max_delay=1, max_retry_after=5, deadline=60
    )
    retry = Retry.from_config(config, rng=random.Random(3))
    assert (retry.max_attempts, retry.base_delay, retry.max_delay) == (2, 0.25, 1)
    assert (retry.max_retry_after, retry.deadline) == (5, 60)
    provider = MockProvider(error=unavailable())
    with pytest.raises(ProviderError, match="upstream overloaded"):
        await Pipeline(provider, [retry]).handle(make_request())
    assert provider.calls == 2
