"""Timeout: total, first-token and idle limits, each cancelling the upstream call."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from middlewares import Timeout, TimeoutConfig
from pipeline import (
    Context,
    GatewayTimeoutError,
    Handler,
    Pipeline,
    Request,
    ResponseStream,
    StreamLimits,
)
from providers import MockProvider

from ..conftest import make_request


async def read_all(pipeline: Pipeline, ctx: Context | None = None) -> list[str]:
    """Stream one request to its end and return the chunks' texts."""
    texts: list[str] = []
    async with pipeline.stream(make_request(), ctx) as stream:
        async for chunk in stream:
            texts.append(chunk.text)
    return texts


async def test_cancelling_the_caller_propagates_and_closes_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = MockProvider(ttft=10)
    pipeline = Pipeline(provider, [Timeout(total=60, first_token=5, idle=5)])
    with trio.move_on_after(1) as scope:
        await read_all(pipeline)
    # The caller's own cancellation is not a timeout of ours: it is not turned into a 504.
    assert scope.cancelled_caught
    assert provider.open_streams == 0
    assert provider.closed_streams == 1


async def test_first_token_limit_cancels_a_slow_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = MockProvider(ttft=5)
    pipeline = Pipeline(provider, [Timeout(first_token=2)])
    start = trio.current_time()
    with pytest.raises(GatewayTimeoutError, match=r"no first token within 2 s") as info:
        await read_all(pipeline)
    assert info.value.status == 504
    assert trio.current_time() - start == pytest.approx(2)
    assert provider.open_streams == 0
    assert provider.closed_streams == 1


async def test_first_token_limit_covers_a_provider_that_blocks_before_its_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def stuck(request: Request, ctx: Context) -> str:
        await trio.sleep(100)
        return "never"

    provider = MockProvider(handler=stuck)
    pipeline = Pipeline(provider, [Timeout(first_token=3)])
    start = trio.current_time()
    with pytest.raises(GatewayTimeoutError, match="first-token timeout"):
        await pipeline.handle(make_request())
    assert trio.current_time() - start == pytest.approx(3)
    assert provider.calls == 1
    assert provider.open_streams == 0


async def test_idle_limit_cuts_a_stream_that_stalls_between_chunks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = MockProvider(chunks=4, chunk_delay=5)
    pipeline = Pipeline(provider, [Timeout(first_token=10, idle=2)])
    stream = await pipeline.handle(make_request())
    received = 0
    with pytest.raises(GatewayTimeoutError, match=r"no chunk for 2 s \(idle timeout\)"):
        async for _ in stream:
            received += 1
    assert received == 1
    # The upstream call is cancelled when the limit passes, before the consumer closes.
    assert provider.open_streams == 0
    assert provider.closed_streams == 1
    await stream.aclose()


async def test_idle_limit_is_not_tripped_by_a_slow_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = MockProvider("abcd", chunks=4, chunk_delay=1)
    pipeline = Pipeline(provider, [Timeout(first_token=2, idle=2)])
    texts = []
    async with pipeline.stream(make_request()) as stream:
        async for chunk in stream:
            texts.append(chunk.text)
            await trio.sleep(10)  # the client reads slowly; the upstream is never idle for 2 s
    assert "".join(texts) == "abcd"
    assert provider.open_streams == 0


async def test_total_limit_ends_a_stream_that_runs_too_long(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = MockProvider(chunks=10, chunk_delay=1)
    pipeline = Pipeline(provider, [Timeout(total=4.5, first_token=2, idle=2)])
    ctx = Context()
    received = 0
    with pytest.raises(GatewayTimeoutError, match=r"within 4.5 s \(total timeout\)"):
        async with pipeline.stream(make_request(), ctx) as stream:
            async for _ in stream:
                received += 1
    assert received == 5  # chunks at t=0, 1, 2, 3, 4; the next would come at 5
    assert trio.current_time() - ctx.started == pytest.approx(4.5)
    assert provider.open_streams == 0


async def test_total_limit_counts_from_arrival_and_tightens_the_context_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[float | None] = []

    def handler(request: Request, ctx: Context) -> str:
        seen.append(ctx.deadline)
        return "ok"

    ctx = Context()
    await trio.sleep(3)  # time spent before the timeout middleware runs counts too
    await Pipeline(MockProvider(handler=handler), [Timeout(total=10)]).complete(make_request(), ctx)
    assert seen == [ctx.started + 10]
    assert ctx.deadline == ctx.started + 10


async def test_a_tighter_deadline_from_elsewhere_is_kept_and_enforced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ctx = Context(deadline=trio.current_time() + 2)
    provider = MockProvider(ttft=5)
    pipeline = Pipeline(provider, [Timeout(total=60)])
    with pytest.raises(GatewayTimeoutError, match="before its deadline"):
        await read_all(pipeline, ctx)
    assert ctx.deadline == ctx.started + 2
    assert provider.open_streams == 0


async def test_the_earliest_limit_names_itself(autojump_clock: trio.testing.MockClock) -> None:
    # A first-token limit longer than the total: the total passes first and says so.
    pipeline = Pipeline(MockProvider(ttft=10), [Timeout(total=3, first_token=5)])
    with pytest.raises(GatewayTimeoutError, match="total timeout"):
        await read_all(pipeline)


async def test_no_limits_let_a_slow_provider_finish(autojump_clock: trio.testing.MockClock) -> None:
    provider = MockProvider("slow", chunks=2, ttft=1000, chunk_delay=1000)
    answer = await Pipeline(provider, [Timeout()]).complete(make_request())
    assert answer.text == "slow"


async def test_from_config_takes_the_timeouts_section(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timeout = Timeout.from_config(TimeoutConfig(total=30, first_token=1.5, idle=None))
    assert (timeout.total, timeout.first_token, timeout.idle) == (30, 1.5, None)
    with pytest.raises(GatewayTimeoutError, match=r"within 1.5 s"):
        await read_all(Pipeline(MockProvider(ttft=2), [timeout]))


async def test_a_first_token_limit_alone_does_not_limit_later_chunks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = MockProvider("abc", chunks=3, ttft=1, chunk_delay=50)
    answer = await Pipeline(provider, [Timeout(first_token=2)]).complete(make_request())
    assert answer.text == "abc"


async def test_the_limits_offered_to_the_provider_last_only_for_its_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[StreamLimits | None] = []

    async def look(request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        seen.append(ctx.stream_limits)
        return await call_next(request, ctx)

    ctx = Context()
    start = trio.current_time()
    await Pipeline(MockProvider(chunk_delay=0.5), [Timeout(first_token=5, idle=2), look]).complete(
        make_request(), ctx
    )
    (offered,) = seen
    assert offered is not None
    assert (offered.first_token_deadline - start, offered.idle) == (5, 2)
    assert not offered.enforced  # a mock that waits does not: the middleware wraps its stream
    assert ctx.stream_limits is None  # a route called directly later must not find it


async def test_a_mock_that_never_waits_enforces_the_limits_and_still_honours_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[StreamLimits | None] = []

    async def look(request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        seen.append(ctx.stream_limits)
        return await call_next(request, ctx)

    pipeline = Pipeline(MockProvider(chunks=4), [Timeout(total=3, first_token=1, idle=1), look])
    async with pipeline.stream(make_request()) as stream:
        await stream.__anext__()
        await trio.sleep(5)  # a slow client: the total limit passes between two reads
        with pytest.raises(GatewayTimeoutError, match="before its deadline"):
            await stream.__anext__()
    (offered,) = seen
    assert offered is not None
    assert offered.enforced
