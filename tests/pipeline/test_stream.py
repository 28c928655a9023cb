"""ResponseStream: assembly, closing on every path, observation, pull-based reading."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from pipeline import (
    ChatCompletion,
    Chunk,
    ChunkChoice,
    Delta,
    FunctionCall,
    FunctionCallDelta,
    Outcome,
    ResponseChoice,
    ResponseMessage,
    ResponseStream,
    StreamEnd,
    ToolCall,
    ToolCallDelta,
    Usage,
    collect_chunks,
)


def text_chunk(text: str, index: int = 0, finish: str | None = None) -> Chunk:
    return Chunk("id-1", 1700000000, "m", [ChunkChoice(index, Delta(content=text), finish)])


def split_at(text: str, cuts: list[int]) -> list[str]:
    points = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


class CountingSource:
    """A source that records how many chunks were pulled and whether it was closed."""

    def __init__(self, chunks: list[Chunk], error_at: int | None = None) -> None:
        self.chunks = chunks
        self.pulled = 0
        self.closed = 0
        self.error_at = error_at

    async def __anext__(self) -> Chunk:
        await trio.lowlevel.checkpoint()
        if self.pulled == self.error_at:
            raise RuntimeError("source broke")
        if self.pulled >= len(self.chunks):
            raise StopAsyncIteration
        self.pulled += 1
        return self.chunks[self.pulled - 1]

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        self.closed += 1


# -- assembling ----------------------------------------------------------------------------


@given(text=st.text(), cuts=st.lists(st.integers(min_value=0), max_size=20))
async def test_collect_equals_the_concatenated_chunks_for_any_chunking(
    text: str, cuts: list[int]
) -> None:
    pieces = split_at(text, cuts)
    chunks = [text_chunk(p) for p in pieces] + [text_chunk("", finish="stop")]
    response = await ResponseStream.from_chunks(chunks).collect()
    assert response.text == "".join(pieces) == text
    assert response.choices[0].finish_reason == "stop"


@given(
    calls=st.lists(
        st.tuples(
            st.text(min_size=1, max_size=10),
            st.text(max_size=40),
            st.lists(st.integers(0), max_size=6),
        ),
        min_size=1,
        max_size=4,
    ),
    interleave=st.randoms(),
)
async def test_tool_call_fragments_join_by_index(
    calls: list[tuple[str, str, list[int]]], interleave: object
) -> None:
    import random

    assert isinstance(interleave, random.Random)
    streams: list[list[ToolCallDelta]] = []
    for index, (name, arguments, cuts) in enumerate(calls):
        fragments = [
            ToolCallDelta(
                index, id=f"call_{index}", type="function", function=FunctionCallDelta(name=name)
            )
        ]
        fragments += [
            ToolCallDelta(index, function=FunctionCallDelta(arguments=p))
            for p in split_at(arguments, cuts)
        ]
        streams.append(fragments)
    # Fragments of different calls may interleave; each call's own order is kept.
    order: list[ToolCallDelta] = []
    queues = [list(s) for s in streams]
    while any(queues):
        queue = interleave.choice([q for q in queues if q])
        order.append(queue.pop(0))
    chunks = [Chunk("id", 1, "m", [ChunkChoice(0, Delta(tool_calls=[f]))]) for f in order]
    chunks.append(Chunk("id", 1, "m", [ChunkChoice(0, Delta(), "tool_calls")]))
    message = collect_chunks(chunks).choices[0].message
    assert message.tool_calls == [
        ToolCall(id=f"call_{i}", function=FunctionCall(name, arguments))
        for i, (name, arguments, _) in enumerate(calls)
    ]


usages = st.builds(Usage, st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6))
messages = st.builds(
    ResponseMessage,
    role=st.just("assistant"),
    content=st.one_of(st.none(), st.text()),
    tool_calls=st.one_of(
        st.none(),
        st.lists(
            st.builds(
                ToolCall,
                id=st.text(min_size=1),
                function=st.builds(FunctionCall, st.text(min_size=1), st.text()),
            ),
            min_size=1,
            max_size=3,
        ),
    ),
)
completions = st.builds(
    ChatCompletion,
    id=st.text(min_size=1, max_size=10),
    created=st.integers(0, 2**31),
    model=st.text(min_size=1, max_size=10),
    choices=st.lists(
        st.builds(
            ResponseChoice,
            st.just(0),
            messages,
            st.sampled_from([None, "stop", "length", "tool_calls"]),
        ),
        max_size=3,
    ).map(lambda cs: [ResponseChoice(i, c.message, c.finish_reason) for i, c in enumerate(cs)]),
    usage=st.one_of(st.none(), usages),
)


@given(completions)
async def test_from_response_then_collect_gives_the_response_back(response: ChatCompletion) -> None:
    assert await ResponseStream.from_response(response).collect() == response


async def test_last_usage_and_first_identity_win() -> None:
    chunks = [
        Chunk("first", 10, "model-a", [ChunkChoice(0, Delta(role="assistant", content="a"))]),
        Chunk("first", 10, "model-a", [ChunkChoice(1, Delta(content="b"), "stop")]),
        Chunk("first", 10, "model-a", [ChunkChoice(0, Delta(content="c"), "length")]),
        Chunk("first", 10, "model-a", usage=Usage(3, 4, 7)),
    ]
    response = collect_chunks(chunks)
    assert (response.id, response.created, response.model) == ("first", 10, "model-a")
    assert [c.message.content for c in response.choices] == ["ac", "b"]
    assert [c.finish_reason for c in response.choices] == ["length", "stop"]
    assert response.usage == Usage(3, 4, 7)


# -- closing -------------------------------------------------------------------------------


async def test_aclose_is_idempotent_and_closes_source_and_resources_once() -> None:
    source = CountingSource([text_chunk("a")])
    released: list[str] = []
    stream = ResponseStream(source, on_close=lambda: released.append("slot"))
    await stream.aclose()
    await stream.aclose()
    assert source.closed == 1
    assert released == ["slot"]
    assert stream.closed
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()


async def test_context_manager_closes_on_error_inside_the_block() -> None:
    source = CountingSource([text_chunk("a"), text_chunk("b")])

    async def consumer() -> None:
        async with ResponseStream(source) as stream:
            await stream.__anext__()
            raise KeyError("consumer failed")

    with pytest.raises(KeyError, match="consumer failed"):
        await consumer()
    assert source.closed == 1


async def test_cleanup_runs_even_when_the_closer_is_cancelled() -> None:
    released = trio.Event()

    async def release() -> None:
        await trio.sleep(1)  # an async release (a network round trip) that must still finish
        released.set()

    stream = ResponseStream(CountingSource([text_chunk("a")]), on_close=release)
    with trio.CancelScope() as scope:
        scope.cancel()
        await stream.aclose()
    assert released.is_set()


async def test_cleanup_that_hangs_is_bounded(autojump_clock: trio.testing.MockClock) -> None:
    async def wedged() -> None:
        await trio.sleep_forever()

    stream = ResponseStream(CountingSource([]), on_close=wedged)
    start = trio.current_time()
    await stream.aclose()
    assert trio.current_time() - start == pytest.approx(5.0)


# -- observing -----------------------------------------------------------------------------


async def observe_ends(
    source: CountingSource, read: int | None
) -> tuple[list[StreamEnd], list[str]]:
    ends: list[StreamEnd] = []
    seen: list[str] = []

    async def on_end(end: StreamEnd) -> None:
        await trio.lowlevel.checkpoint()
        ends.append(end)

    stream = ResponseStream(source).observe(lambda c: seen.append(c.text), on_end)
    async with stream:
        count = 0
        async for _ in stream:
            count += 1
            if read is not None and count == read:
                break
    return ends, seen


async def test_observe_reports_completion_once() -> None:
    source = CountingSource([text_chunk("a"), text_chunk("b")])
    ends, seen = await observe_ends(source, None)
    assert seen == ["a", "b"]
    assert [(e.outcome, e.chunks) for e in ends] == [(Outcome.COMPLETE, 2)]
    assert source.closed == 1


async def test_observe_reports_early_close_as_cancelled() -> None:
    source = CountingSource([text_chunk("a"), text_chunk("b"), text_chunk("c")])
    ends, _ = await observe_ends(source, 1)
    assert [(e.outcome, e.chunks) for e in ends] == [(Outcome.CANCELLED, 1)]
    assert source.closed == 1


async def test_observe_reports_errors_with_the_exception() -> None:
    source = CountingSource([text_chunk("a"), text_chunk("b")], error_at=1)
    ends: list[StreamEnd] = []
    stream = ResponseStream(source).observe(on_end=ends.append)
    with pytest.raises(RuntimeError, match="source broke"):
        async with stream:
            async for _ in stream:
                pass
    assert [(e.outcome, e.chunks) for e in ends] == [(Outcome.ERROR, 1)]
    assert isinstance(ends[0].error, RuntimeError)
    assert source.closed == 1


async def test_a_cancelled_read_ends_and_closes_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A consumer that cancels one read cannot read on after its reservations were released."""

    class Slow(CountingSource):
        async def __anext__(self) -> Chunk:
            await trio.sleep(10)
            return await super().__anext__()

    ends: list[StreamEnd] = []
    source = Slow([text_chunk("a"), text_chunk("b"), text_chunk("c")])
    stream = ResponseStream(source).observe(on_end=ends.append)
    await stream.__anext__()
    with trio.move_on_after(5):
        await stream.__anext__()
    assert source.closed == 1
    assert stream.closed
    assert [(e.outcome, e.chunks) for e in ends] == [(Outcome.CANCELLED, 1)]
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()


async def test_observe_reports_cancellation_mid_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Slow(CountingSource):
        async def __anext__(self) -> Chunk:
            await trio.sleep(10)
            return await super().__anext__()

    ends: list[StreamEnd] = []
    source = Slow([text_chunk("a"), text_chunk("b")])
    stream = ResponseStream(source).observe(on_end=ends.append)
    with trio.move_on_after(15):
        async with stream:
            async for _ in stream:
                pass
    assert [(e.outcome, e.chunks) for e in ends] == [(Outcome.CANCELLED, 1)]
    assert isinstance(ends[0].error, trio.Cancelled)
    assert source.closed == 1


async def test_map_transforms_and_drops() -> None:
    chunks = [text_chunk(t) for t in "abcd"]
    stream = ResponseStream.from_chunks(chunks).map(
        lambda c: None if c.text == "b" else text_chunk(c.text.upper())
    )
    assert (await stream.collect()).text == "ACD"


# -- pulling -------------------------------------------------------------------------------


async def test_peek_does_not_consume() -> None:
    source = CountingSource([text_chunk("a"), text_chunk("b")])
    stream = ResponseStream(source)
    first = await stream.peek()
    assert first is not None
    assert first.text == "a"
    assert await stream.peek() is first
    assert source.pulled == 1
    assert (await stream.collect()).text == "ab"


async def test_peek_on_an_empty_stream_is_none() -> None:
    assert await ResponseStream.from_chunks([]).peek() is None


async def test_nothing_is_read_before_the_consumer_asks() -> None:
    source = CountingSource([text_chunk(str(i)) for i in range(100)])
    stream = ResponseStream(source).observe(on_chunk=lambda c: None).map(lambda c: c)
    assert source.pulled == 0
    async with stream:
        for expected in range(1, 6):
            await stream.__anext__()
            await trio.testing.wait_all_tasks_blocked()
            assert source.pulled == expected


class Doubling(ResponseStream):
    """A wrapper written as a subclass: it overrides only the hook, `_next_chunk`."""

    def __init__(self, inner: ResponseStream) -> None:
        super().__init__(inner)
        self.calls = 0

    async def _next_chunk(self) -> Chunk:
        self.calls += 1
        chunk = await self._source.__anext__()
        return text_chunk(chunk.text * 2)


async def test_a_subclass_hook_is_spared_peeked_and_closed_streams() -> None:
    source = CountingSource([text_chunk("a"), text_chunk("b"), text_chunk("c")])
    stream = Doubling(ResponseStream(source))
    peeked = await stream.peek()
    assert peeked is not None
    assert peeked.text == "aa"
    assert await stream.__anext__() is peeked
    assert stream.calls == 1
    assert (await stream.__anext__()).text == "bb"
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()
    assert (stream.calls, source.pulled, source.closed) == (2, 2, 1)
