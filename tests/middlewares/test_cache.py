"""Cache: exact-match keys, clean answers only, Cache-Control, single flight, store failures."""

from __future__ import annotations

import itertools
from contextlib import nullcontext
from typing import Any

import msgspec
import pytest
import structlog.testing
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from middlewares import Cache, CacheConfig, CacheStatistics, MemoryStore
from pipeline import (
    BaseProvider,
    Chunk,
    ChunkChoice,
    Context,
    Delta,
    FunctionDef,
    Message,
    Pipeline,
    ProviderError,
    Request,
    ResponseStream,
    StreamError,
    StreamOptions,
    Tool,
    UnavailableError,
)
from providers import MockProvider

from ..conftest import make_request
from ..helpers import assert_nothing_held
from .conftest import FlakyStore


def numbered(**options: Any) -> MockProvider:
    """A provider whose every answer is different: `answer 1`, `answer 2`, ..."""
    count = itertools.count(1)
    return MockProvider(handler=lambda request, ctx: f"answer {next(count)}", **options)


async def ask(
    pipeline: Pipeline, request: Request | None = None, **context: Any
) -> tuple[str, Context]:
    ctx = Context(**context)
    response = await pipeline.complete(request or make_request(), ctx)
    return response.text, ctx


def cache_stack(
    provider: MockProvider, store: MemoryStore | None = None, **options: Any
) -> Pipeline:
    return Pipeline(provider, [Cache(store or MemoryStore(), **options)])


# -- hits and misses -----------------------------------------------------------------------


async def test_a_repeated_request_is_served_from_the_cache() -> None:
    provider = numbered()
    pipeline = cache_stack(provider)
    first, ctx1 = await ask(pipeline)
    second, ctx2 = await ask(pipeline)
    assert first == second == "answer 1"
    assert provider.calls == 1
    assert (ctx1.cache_status, ctx1.response_headers) == ("miss", {"x-cache": "miss"})
    assert (ctx2.cache_status, ctx2.response_headers) == ("hit", {"x-cache": "hit"})


async def test_a_hit_replays_the_same_chunks_including_usage() -> None:
    pipeline = cache_stack(MockProvider("x" * 30, chunks=5))
    async with pipeline.stream(make_request()) as stream:
        original = [chunk async for chunk in stream]
    async with pipeline.stream(make_request()) as stream:
        replayed = [chunk async for chunk in stream]
    assert replayed == original
    assert replayed[-1].usage is not None


async def test_streaming_and_whole_requests_share_an_entry() -> None:
    provider = numbered()
    pipeline = cache_stack(provider)
    await ask(pipeline, make_request(stream=True))
    text, ctx = await ask(
        pipeline, make_request(stream=False, stream_options=StreamOptions(include_usage=True))
    )
    assert (text, ctx.cache_status, provider.calls) == ("answer 1", "hit", 1)


async def test_entries_are_per_key_unless_shared() -> None:
    provider = numbered()
    pipeline = cache_stack(provider)
    assert (await ask(pipeline, key_id="alice"))[0] == "answer 1"
    assert (await ask(pipeline, key_id="bob"))[0] == "answer 2"
    assert (await ask(pipeline, key_id="alice"))[0] == "answer 1"
    shared = cache_stack(numbered(), shared=True)
    assert (await ask(shared, key_id="alice"))[0] == "answer 1"
    assert (await ask(shared, key_id="bob"))[0] == "answer 1"


async def test_entries_expire_after_the_ttl(autojump_clock: trio.testing.MockClock) -> None:
    pipeline = cache_stack(numbered(), ttl=10)
    assert (await ask(pipeline))[0] == "answer 1"
    await trio.sleep(9.9)
    assert (await ask(pipeline))[0] == "answer 1"
    await trio.sleep(0.1)
    assert (await ask(pipeline))[0] == "answer 2"


async def test_the_store_bounds_the_entries() -> None:
    pipeline = cache_stack(numbered(), MemoryStore(cache_max_entries=1))
    assert (await ask(pipeline, make_request("a")))[0] == "answer 1"
    assert (await ask(pipeline, make_request("b")))[0] == "answer 2"
    assert (await ask(pipeline, make_request("a")))[0] == "answer 3"


class Unfinished(BaseProvider):
    """Streams text but never a finish reason."""

    async def execute(self, request: Request, ctx: Context) -> ResponseStream:
        return ResponseStream.from_chunks([Chunk("c", 1, "m", [ChunkChoice(0, Delta("x"))])])


@pytest.mark.parametrize(
    ("how", "stored"),
    [
        ("complete", True),
        ("error mid-stream", False),
        ("closed early", False),
        ("cancelled", False),
        ("no finish reason", False),
        ("too many chunks", False),
    ],
)
async def test_only_a_cleanly_finished_answer_is_stored(
    how: str, stored: bool, autojump_clock: trio.testing.MockClock
) -> None:
    store = MemoryStore()
    provider = {
        "complete": MockProvider(chunks=4),
        "too many chunks": MockProvider(chunks=4),  # 4 + finish + usage
        "error mid-stream": MockProvider(chunks=4, fail_after=2),
        "no finish reason": Unfinished(),
    }.get(how, MockProvider(chunks=4, chunk_delay=1))
    cache = Cache(store, max_chunks=5 if how == "too many chunks" else 100)
    raises = (
        pytest.raises(StreamError, match="broke after 2 chunks")
        if how == "error mid-stream"
        else nullcontext()
    )
    with trio.move_on_after(2.5), raises:
        async with Pipeline(provider, [cache]).stream(make_request()) as stream:
            async for chunk in stream:
                if how == "closed early" and chunk.text:
                    break
    assert store.statistics().cache_entries == stored
    assert_nothing_held(store=store, cache=cache)


# -- Cache-Control -------------------------------------------------------------------------


async def test_no_cache_skips_the_lookup_but_stores_the_fresh_answer() -> None:
    pipeline = cache_stack(numbered())
    await ask(pipeline)
    text, ctx = await ask(pipeline, headers={"cache-control": "No-Cache"})
    assert (text, ctx.cache_status, ctx.response_headers["x-cache"]) == (
        "answer 2",
        "bypass",
        "bypass",
    )
    assert (await ask(pipeline))[0] == "answer 2"


async def test_no_store_reads_but_does_not_write() -> None:
    pipeline = cache_stack(numbered())
    text, ctx = await ask(pipeline, headers={"cache-control": "no-store"})
    assert (text, ctx.cache_status) == ("answer 1", "miss")
    assert (await ask(pipeline, headers={"cache-control": "max-age=0, no-store"}))[0] == "answer 2"
    assert (await ask(pipeline))[0] == "answer 3"
    assert (await ask(pipeline, headers={"cache-control": "no-store"}))[0] == "answer 3"
    text, _ = await ask(pipeline, headers={"cache-control": "no-cache, no-store"})
    assert text == "answer 4"
    assert (await ask(pipeline))[0] == "answer 3"


# -- single flight -------------------------------------------------------------------------


async def run_together(pipeline: Pipeline, count: int, **context: Any) -> list[tuple[str, str]]:
    results: list[tuple[str, str]] = []

    async def one() -> None:
        text, ctx = await ask(pipeline, **context)
        assert ctx.cache_status is not None
        results.append((text, ctx.cache_status))

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return sorted(results)


async def test_concurrent_identical_misses_make_one_upstream_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = numbered(ttft=1, chunk_delay=0.1)
    cache = Cache(MemoryStore())
    results = await run_together(Pipeline(provider, [cache]), 10)
    assert provider.calls == 1
    assert results == [("answer 1", "hit")] * 9 + [("answer 1", "miss")]
    assert_nothing_held(cache=cache)


async def test_when_the_leader_fails_its_waiters_go_upstream_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = numbered(ttft=1, error=ProviderError("boom", upstream_status=500), error_count=1)
    cache = Cache(MemoryStore())
    pipeline = Pipeline(provider, [cache])
    results: list[str] = []

    async def one() -> None:
        try:
            results.append((await ask(pipeline))[0])
        except ProviderError:
            results.append("failed")

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
    # The leader failed at t=1; its four waiters then called together, not one by one.
    assert trio.current_time() - start == pytest.approx(2.0)
    assert provider.calls == 5
    assert sorted(results) == ["answer 1", "answer 2", "answer 3", "answer 4", "failed"]
    assert_nothing_held(cache=cache)
    text, ctx = await ask(pipeline)  # the clean answers were stored; one of them stands
    assert text in results
    assert (ctx.cache_status, provider.calls) == ("hit", 5)


async def test_a_failing_upstream_fails_identical_requests_together_not_in_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    down = ProviderError("down", upstream_status=503)
    pipeline = Pipeline(MockProvider(ttft=5, error=down), [Cache(MemoryStore())])
    failed_at: list[float] = []

    async def one() -> None:
        with pytest.raises(ProviderError, match=r"^down$"):
            await ask(pipeline)
        failed_at.append(trio.current_time())

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
    assert [t - start for t in failed_at] == pytest.approx([5, 10, 10, 10, 10])


class SlowStart(MockProvider):
    """Spends `delay` seconds inside its first `execute`, before that answer's stream exists."""

    def __init__(self, delay: float) -> None:
        count = itertools.count(1)
        super().__init__(handler=lambda request, ctx: f"answer {next(count)}")
        self.delays = [delay]

    async def execute(self, request: Request, ctx: Context) -> ResponseStream:
        if self.delays:
            await trio.sleep(self.delays.pop())
        return await super().execute(request, ctx)


@pytest.mark.parametrize("when", ["before the stream", "mid-stream"])
async def test_when_the_leader_is_cancelled_a_waiter_leads_and_nothing_is_left_behind(
    when: str, autojump_clock: trio.testing.MockClock
) -> None:
    store = MemoryStore()
    slow = {"mid-stream": numbered(chunks=4, chunk_delay=1), "before the stream": SlowStart(10)}
    provider = slow[when]
    cache = Cache(store)
    pipeline = Pipeline(provider, [cache])
    follower: list[str] = []

    async def leader() -> None:
        with trio.move_on_after(1.5):
            await ask(pipeline)

    async def wait_then_ask() -> None:
        await trio.sleep(0.5)
        follower.append((await ask(pipeline))[0])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(leader)
        nursery.start_soon(wait_then_ask)
    assert follower == ["answer 2" if when == "mid-stream" else "answer 1"]
    assert provider.calls == (2 if when == "mid-stream" else 1)
    assert_nothing_held(store=store, cache=cache)


async def test_a_waiter_goes_ahead_alone_after_max_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = numbered(chunks=2, chunk_delay=100)
    pipeline = Pipeline(provider, [Cache(MemoryStore(), max_wait=5)])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, pipeline)
        await trio.sleep(1)
        start = trio.current_time()
        text, ctx = await ask(pipeline)
        assert trio.current_time() - start >= 5
        assert (text, ctx.cache_status) == ("answer 2", "miss")


async def test_instances_sharing_a_store_make_one_upstream_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = numbered(ttft=1)
    store = MemoryStore()
    one, two = Pipeline(provider, [Cache(store)]), Pipeline(provider, [Cache(store)])
    results: list[tuple[str, str]] = []
    async with trio.open_nursery() as nursery:
        for pipeline in (one, two, one, two):
            nursery.start_soon(_collect, pipeline, results)
    assert provider.calls == 1
    assert sorted(results) == [("answer 1", "hit")] * 3 + [("answer 1", "miss")]
    assert_nothing_held(store=store)


async def _collect(pipeline: Pipeline, results: list[tuple[str, str]]) -> None:
    text, ctx = await ask(pipeline)
    results.append((text, str(ctx.cache_status)))


async def test_an_instance_goes_ahead_when_the_other_holds_the_lock_too_long(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    cache = Cache(store, max_wait=3)
    pipeline = Pipeline(numbered(), [cache])
    request = make_request()
    assert await store.try_lock(f"lock:{cache.key_for(request, Context())}", ttl=60)
    start = trio.current_time()
    text, ctx = await ask(pipeline, request)
    assert 3 <= trio.current_time() - start < 4
    assert (text, ctx.cache_status) == ("answer 1", "miss")
    assert (await ask(pipeline))[1].cache_status == "hit"


# -- the key -------------------------------------------------------------------------------

MESSAGES = [
    [Message(role="user", content="hi")],
    [Message(role="user", content="ho")],
    [Message(role="system", content="be brief"), Message(role="user", content="hi")],
]
FIELDS: dict[str, list[Any]] = {
    "model": ["a", "b"],
    "messages": MESSAGES,
    "temperature": [None, 0.0, 0.7],
    "top_p": [None, 0.5],
    "max_tokens": [None, 10],
    "max_completion_tokens": [None, 20],
    "stop": [None, "x", ["x", "y"]],
    "n": [None, 1, 2],
    "seed": [None, 1, 2],
    "presence_penalty": [None, 0.5],
    "frequency_penalty": [None, -0.5],
    "logit_bias": [None, {"50256": -100.0}],
    "logprobs": [None, True],
    "top_logprobs": [None, 3],
    "tools": [None, [Tool(FunctionDef("f"))], [Tool(FunctionDef("g", parameters={}))]],
    "tool_choice": [None, "auto", {"type": "function", "function": {"name": "f"}}],
    "parallel_tool_calls": [None, False],
    "response_format": [None, {"type": "json_object"}],
    "user": [None, "u1"],
    "extra": [{}, {"reasoning_effort": "low"}, {"reasoning_effort": "high"}],
}
EXCLUDED: dict[str, list[Any]] = {
    "stream": [False, True],
    "stream_options": [None, StreamOptions(include_usage=True), StreamOptions()],
}


def test_the_key_covers_every_request_field_but_the_excluded() -> None:
    assert set(FIELDS) | set(EXCLUDED) == set(Request.__struct_fields__)


@st.composite
def request_pairs(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two sets of request fields; the second redraws some of the first's."""
    domains = {**FIELDS, **EXCLUDED}
    first = {name: draw(st.sampled_from(values)) for name, values in domains.items()}
    redrawn = draw(st.sets(st.sampled_from(sorted(domains))))
    second = dict(first)
    for name in redrawn:
        second[name] = draw(st.sampled_from(domains[name]))
    return first, second


@given(request_pairs(), st.sampled_from([None, "alice"]))
def test_two_requests_share_a_key_iff_they_differ_only_in_excluded_fields(
    pair: tuple[dict[str, Any], dict[str, Any]], key_id: str | None
) -> None:
    first, second = pair
    cache = Cache(MemoryStore())
    ctx = Context(key_id=key_id)
    same = all(first[name] == second[name] for name in FIELDS)
    keys = {cache.key_for(Request(**fields), ctx) for fields in pair}
    assert (len(keys) == 1) == same


def test_the_key_survives_a_round_trip_through_json() -> None:
    request = Request(**{name: values[-1] for name, values in FIELDS.items()})
    body = msgspec.json.encode(request)
    decoded = msgspec.json.decode(body, type=Request)
    cache = Cache(MemoryStore())
    assert cache.key_for(decoded, Context()) == cache.key_for(request, Context())


# -- configuration and store failures ------------------------------------------------------


async def test_from_config() -> None:
    config = CacheConfig(enabled=True, ttl=12, shared=True, max_entries=3, max_bytes=1000)
    store = MemoryStore()
    cache = Cache.from_config(config, store=store)
    assert (cache.ttl, cache.shared, cache.store) == (12, True, store)


async def test_a_failing_store_fails_open_to_the_upstream() -> None:
    provider = numbered()
    pipeline = Pipeline(provider, [Cache(FlakyStore())])
    with structlog.testing.capture_logs() as logs:
        assert (await ask(pipeline))[0] == "answer 1"
        text, ctx = await ask(pipeline)
    assert (text, ctx.cache_status) == ("answer 2", "miss")
    assert ctx.store_errors == {"cache": "fail_open"}
    assert [(e["event"], e["operation"]) for e in logs if e["log_level"] != "debug"] == [
        ("store_error", "read")
    ]


async def test_a_failing_store_fails_closed_with_503() -> None:
    provider = numbered()
    pipeline = Pipeline(provider, [Cache(FlakyStore(), on_error="fail_closed")])
    with (
        structlog.testing.capture_logs(),
        pytest.raises(UnavailableError, match="The cache cannot reach its state store"),
    ):
        await ask(pipeline)
    assert provider.calls == 0


async def test_a_failed_write_is_logged_and_the_answer_still_arrives(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = FlakyStore(failing=False)
    cache = Cache(store, on_error="fail_closed")
    with structlog.testing.capture_logs() as logs:
        async with Pipeline(numbered(), [cache]).stream(make_request()) as stream:
            store.failing = True
            text = "".join([chunk.text async for chunk in stream])
    assert text == "answer 1"
    # The unlock fails too, within the same log interval: counted, not logged again.
    assert [(e["event"], e["operation"]) for e in logs if e["log_level"] != "debug"] == [
        ("store_error", "write")
    ]
    assert cache.policy.errors == 2
    assert_nothing_held(cache=cache)


async def test_statistics_count_the_misses_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache = Cache(MemoryStore())
    pipeline = Pipeline(numbered(ttft=1), [cache])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, pipeline)
        nursery.start_soon(ask, pipeline, make_request("another question"))
        await trio.testing.wait_all_tasks_blocked()
        assert cache.statistics() == CacheStatistics(flights=2)
    assert cache.statistics() == CacheStatistics(flights=0)
