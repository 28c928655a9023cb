"""RateLimiter: exact admission under concurrency, token settlement on every path, headers."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import msgspec
import pytest
import structlog.testing
import trio
import trio.testing

from middlewares import (
    ApiKey,
    Bucket,
    Cache,
    MemoryStore,
    RateLimitConfig,
    RateLimiter,
    RateLimitStatistics,
    Reservation,
    Store,
)
from middlewares._rate_limit import format_duration
from pipeline import (
    Chunk,
    Context,
    Pipeline,
    ProviderError,
    RateLimitError,
    Request,
    ResponseStream,
    UnavailableError,
    Usage,
)
from providers import MockProvider

from ..conftest import make_request
from .conftest import FlakyStore

TEXT = "abcd" * 10  # 10 completion tokens
PROMPT = 6  # make_request("hello"): 4 per message + 2 for the text
USAGE = PROMPT + 10


def context(key: ApiKey | None = None) -> Context:
    ctx = Context()
    if key is not None:
        ctx.key_id, ctx.key = key.id, key
    return ctx


async def admitted(pipeline: Pipeline, ctx: Context | None = None, model: str = "mock-1") -> bool:
    try:
        await pipeline.complete(make_request(model=model), ctx or Context())
    except RateLimitError:
        return False
    return True


class Ledger(MemoryStore):
    """A memory store that also sums what was reserved and settled per bucket.

    A bucket's level drains with time, so what a request was finally charged is read from
    the ledger: the reservation plus every correction.
    """

    def __init__(self) -> None:
        super().__init__()
        self.net: Counter[str] = Counter()

    async def reserve(self, buckets: Sequence[Bucket]) -> Reservation:
        reservation = await super().reserve(buckets)
        if reservation.granted:
            self.net.update({b.key: b.amount for b in buckets})
        return reservation

    async def settle(self, buckets: Sequence[Bucket]) -> None:
        await super().settle(buckets)
        self.net.update({b.key: b.amount for b in buckets})

    def tokens(self, key_id: str = "anonymous") -> int:
        return self.net[f"rl:tok:key:{key_id}"]


# -- admission -----------------------------------------------------------------------------


async def test_of_100_concurrent_requests_against_a_limit_of_10_exactly_10_pass(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = MockProvider(TEXT, ttft=0.5, chunk_delay=0.01)
    pipeline = Pipeline(provider, [RateLimiter(MemoryStore(), requests_per_minute=10)])
    passed: list[Context] = []
    rejected: list[RateLimitError] = []

    async def one() -> None:
        ctx = Context()
        try:
            await pipeline.complete(make_request(), ctx)
        except RateLimitError as exc:
            rejected.append(exc)
        else:
            passed.append(ctx)

    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(one)
    assert len(passed) == 10
    assert provider.calls == 10
    assert len(rejected) == 90
    for error in rejected:
        assert error.status == 429
        assert error.retryable
        assert error.retry_after is not None
        assert 0 < error.retry_after <= 6
        assert error.headers["retry-after"] == str(max(1, math.ceil(error.retry_after)))


async def test_the_window_drains_and_admits_again(autojump_clock: trio.testing.MockClock) -> None:
    pipeline = Pipeline(MockProvider(), [RateLimiter(MemoryStore(), requests_per_minute=2)])
    assert [await admitted(pipeline) for _ in range(3)] == [True, True, False]
    with pytest.raises(RateLimitError, match=r"requests per minute of this key \(limit 2,") as info:
        await pipeline.complete(make_request())
    assert info.value.retry_after == pytest.approx(30)
    await trio.sleep(30)
    assert [await admitted(pipeline) for _ in range(2)] == [True, False]


async def test_limits_per_key_per_model_and_global(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = RateLimiter(
        MemoryStore(),
        requests_per_minute=3,
        model_requests_per_minute={"small": 4},
        global_requests_per_minute=6,
    )
    pipeline = Pipeline(MockProvider(), [limiter])
    alice = ApiKey("alice", requests_per_minute=1)
    bob = ApiKey("bob")  # no limit of its own: the default of 3
    assert [await admitted(pipeline, context(alice)) for _ in range(2)] == [True, False]
    assert [await admitted(pipeline, context(bob), "small") for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]
    carol = ApiKey("carol")
    assert await admitted(pipeline, context(carol), "small")  # the 4th of `small`
    assert not await admitted(pipeline, context(carol), "small")  # `small` is full
    assert await admitted(pipeline, context(carol), "big")  # 6th over all keys
    assert not await admitted(pipeline, Context(), "big")  # global limit reached


async def test_headers_describe_the_tightest_buckets_on_success(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = RateLimiter(
        MemoryStore(),
        requests_per_minute=10,
        global_requests_per_minute=100,
        tokens_per_minute=1000,
        default_output_tokens=100,
    )
    ctx = Context()
    await Pipeline(MockProvider(TEXT), [limiter]).complete(make_request(), ctx)
    assert ctx.response_headers == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "6s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": str(1000 - PROMPT - 100),
        "x-ratelimit-reset-tokens": "6.36s",
    }


async def test_a_rejection_carries_retry_after_and_the_headers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipeline = Pipeline(MockProvider(), [RateLimiter(MemoryStore(), requests_per_minute=1)])
    await pipeline.complete(make_request())
    ctx = Context()
    with pytest.raises(RateLimitError, match=r"requests per minute of this key \(limit 1") as info:
        await pipeline.complete(make_request(), ctx)
    assert info.value.retry_after == 60
    assert info.value.headers == {
        "x-ratelimit-limit-requests": "1",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s",
        "retry-after": "60",
        "retry-after-ms": "60000",
    }
    assert ctx.response_headers == info.value.headers


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.02, "20ms"),
        (0.0201, "21ms"),
        (0.9999, "1s"),
        (1, "1s"),
        (6.36, "6.36s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (90.5, "1m30.5s"),
        (3723.5, "1h2m3.5s"),
    ],
)
def test_durations_are_written_the_way_openai_writes_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# -- tokens: reserved before, settled after ------------------------------------------------


def token_limiter(store: Store, tpm: int = 1000) -> RateLimiter:
    return RateLimiter(store, tokens_per_minute=tpm, default_output_tokens=100)


async def test_tokens_are_settled_with_the_reported_usage(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = Ledger()
    pipeline = Pipeline(MockProvider(TEXT), [token_limiter(store)])
    ctx = Context()
    await pipeline.complete(make_request(), ctx)
    assert ctx.usage is not None
    assert ctx.usage.total_tokens == USAGE
    assert store.tokens() == USAGE


async def test_the_output_estimate_uses_the_request_limit_times_n(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = Ledger()
    pipeline = Pipeline(MockProvider(TEXT, ttft=1), [token_limiter(store)])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pipeline.complete, make_request(max_tokens=50, n=3))
        await trio.sleep(0.5)  # reserved, not yet settled
        assert store.tokens() == PROMPT + 150
    assert store.tokens() == USAGE


async def test_usage_above_the_estimate_overdraws_and_delays_the_next_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    long_text = "x" * 4000  # 1000 completion tokens against an estimate of 100
    pipeline = Pipeline(MockProvider(long_text), [token_limiter(store, tpm=500)])
    await pipeline.complete(make_request())
    with pytest.raises(RateLimitError, match=r"tokens per minute of this key \(limit 500,") as info:
        await pipeline.complete(make_request())
    level = PROMPT + 1000
    assert info.value.retry_after == pytest.approx((level + PROMPT + 100 - 500) * 60 / 500)


async def test_a_cache_hit_costs_no_tokens(autojump_clock: trio.testing.MockClock) -> None:
    store = Ledger()
    provider = MockProvider(TEXT)
    pipeline = Pipeline(provider, [token_limiter(store), Cache(MemoryStore())])
    await pipeline.complete(make_request())
    charged = store.tokens()
    assert charged > 0
    ctx = Context()
    await pipeline.complete(make_request(), ctx)
    assert (ctx.cache_status, provider.calls) == ("hit", 1)
    assert store.tokens() == charged


async def test_usage_without_a_total_is_charged_as_prompt_plus_completion(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class NoTotal(MockProvider):
        """Reports prompt and completion tokens but no total, as some upstreams do."""

        async def execute(self, request: Request, ctx: Context) -> ResponseStream:
            def strip(chunk: Chunk) -> Chunk:
                if chunk.usage is not None:
                    usage = chunk.usage
                    chunk = msgspec.structs.replace(
                        chunk, usage=Usage(usage.prompt_tokens, usage.completion_tokens)
                    )
                return chunk

            return (await super().execute(request, ctx)).map(strip)

    store = Ledger()
    ctx = Context()
    await Pipeline(NoTotal(TEXT), [token_limiter(store)]).complete(make_request(), ctx)
    assert ctx.usage is not None
    assert ctx.usage.total_tokens == 0
    assert store.tokens() == ctx.usage.prompt_tokens + ctx.usage.completion_tokens > 0


@pytest.mark.parametrize(
    ("how", "charged"),
    [
        ("error before the stream", 0),
        ("error at the first chunk", 0),
        ("cancelled before the stream", PROMPT),
        ("error mid-stream", PROMPT + 3),
        ("closed early", PROMPT + 3),
        ("cancelled mid-stream", PROMPT + 3),
        ("cancelled before the first chunk", PROMPT),
    ],
)
async def test_tokens_are_settled_on_every_path(
    how: str, charged: int, autojump_clock: trio.testing.MockClock
) -> None:
    store = Ledger()
    provider = {
        "error before the stream": MockProvider(error=ProviderError("boom", upstream_status=500)),
        "cancelled before the stream": MockProvider(error=ProviderError("boom"), ttft=10),
        "error at the first chunk": MockProvider(TEXT, fail_after=0),
        "error mid-stream": MockProvider(TEXT, fail_after=3),
        "cancelled before the first chunk": MockProvider(TEXT, ttft=10),
    }.get(how, MockProvider(TEXT, chunks=8, chunk_delay=1))
    pipeline = Pipeline(provider, [token_limiter(store)])
    chunks = 0
    with trio.move_on_after(2.5):  # chunks arrive at 0, 1, 2, ... seconds
        try:
            async with pipeline.stream(make_request()) as stream:
                async for _ in stream:
                    chunks += 1
                    if how == "closed early" and chunks == 3:
                        break
        except ProviderError:
            pass
    assert store.tokens() == charged


async def test_a_prompt_larger_than_a_token_limit_is_rejected_for_good() -> None:
    store = Ledger()
    provider = MockProvider()
    limiter = RateLimiter(store, tokens_per_minute=10)
    with pytest.raises(RateLimitError, match="about 254 tokens, more than the 10") as info:
        await Pipeline(provider, [limiter]).complete(make_request("x" * 1000))
    assert not info.value.retryable
    assert info.value.code == "request_too_large"
    assert provider.calls == 0
    assert store.net == {}


async def test_an_estimate_larger_than_a_token_limit_reserves_the_whole_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = Ledger()
    limiter = RateLimiter(store, tokens_per_minute=50, global_tokens_per_minute=1000)
    ctx = Context()
    await Pipeline(MockProvider(TEXT), [limiter]).complete(make_request(max_tokens=500), ctx)
    assert ctx.response_headers["x-ratelimit-remaining-tokens"] == "0"
    assert store.net == {"rl:tok:key:anonymous": USAGE, "rl:tok:global": USAGE}


async def test_from_config_takes_the_defaults_and_the_per_model_limits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = RateLimiter.from_config(
        RateLimitConfig(requests_per_minute=5, global_tokens_per_minute=10_000),
        store=MemoryStore(),
        model_requests_per_minute={"mock-1": 2},
        model_tokens_per_minute={"other": 300},
    )
    assert limiter.model_requests_per_minute == {"mock-1": 2}
    assert limiter.model_tokens_per_minute == {"other": 300}
    pipeline = Pipeline(MockProvider(), [limiter])
    assert [await admitted(pipeline) for _ in range(3)] == [True, True, False]
    ctx = Context()
    assert await admitted(pipeline, ctx, "other")
    assert ctx.response_headers["x-ratelimit-limit-tokens"] == "300"
    assert ctx.response_headers["x-ratelimit-remaining-requests"] == "2"


# -- when the store fails ------------------------------------------------------------------


async def test_a_failing_store_fails_open_and_warns_once_per_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = FlakyStore()
    limiter = RateLimiter(store, requests_per_minute=1, tokens_per_minute=1000)
    pipeline = Pipeline(MockProvider(), [limiter])
    with structlog.testing.capture_logs() as logs:
        contexts = [Context() for _ in range(3)]
        assert [await admitted(pipeline, ctx) for ctx in contexts] == [True, True, True]
        await trio.sleep(61)
        assert await admitted(pipeline)
        store.failing = False
        assert [await admitted(pipeline) for _ in range(2)] == [True, False]
    assert [
        (e["event"], e.get("failures_since_last_log")) for e in logs if e["log_level"] != "debug"
    ] == [
        ("store_error", 0),
        ("store_error", 2),
        ("store_recovered", None),
    ]
    assert logs[0]["middleware"] == "rate limiter"
    assert logs[0]["policy"] == "fail_open"
    assert logs[0]["error"] == "StoreError: connection refused"
    assert all(ctx.store_errors == {"rate limiter": "fail_open"} for ctx in contexts)
    assert all("x-ratelimit-limit-requests" not in ctx.response_headers for ctx in contexts)
    assert limiter.policy.errors == 4


async def test_a_failing_store_fails_closed_with_503() -> None:
    provider = MockProvider()
    limiter = RateLimiter(FlakyStore(), requests_per_minute=1, on_error="fail_closed")
    with (
        structlog.testing.capture_logs(),
        pytest.raises(UnavailableError, match="rate limiter cannot reach") as info,
    ):
        await Pipeline(provider, [limiter]).complete(make_request())
    assert info.value.status == 503
    assert info.value.retry_after == 1.0
    assert provider.calls == 0


async def test_a_failed_settlement_is_logged_and_does_not_change_the_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = FlakyStore(failing=False)
    limiter = RateLimiter(store, tokens_per_minute=1000, on_error="fail_closed")
    with structlog.testing.capture_logs() as logs:
        async with Pipeline(MockProvider(TEXT), [limiter]).stream(make_request()) as stream:
            store.failing = True
            text = "".join([chunk.text async for chunk in stream])
    assert text == TEXT
    assert [(e["event"], e["operation"]) for e in logs if e["log_level"] != "debug"] == [
        ("store_error", "settle")
    ]


async def test_statistics_count_the_estimates_not_settled_yet(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = token_limiter(MemoryStore())
    pipeline = Pipeline(MockProvider(TEXT, chunks=2), [limiter])
    async with pipeline.stream(make_request()) as stream:
        await stream.__anext__()
        assert limiter.statistics() == RateLimitStatistics(unsettled=1)
    assert limiter.statistics() == RateLimitStatistics(unsettled=0)
    with pytest.raises(ProviderError, match="boom"):
        await Pipeline(MockProvider(error=ProviderError("boom")), [limiter]).complete(
            make_request()
        )
    assert limiter.statistics() == RateLimitStatistics(unsettled=0)
