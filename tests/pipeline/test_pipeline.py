"""Pipeline composition: order, short-circuits, rewriting, routing, closing on every path."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from pipeline import (
    BaseProvider,
    ChatCompletion,
    Context,
    Handler,
    Middleware,
    NotFoundError,
    Pipeline,
    Request,
    ResponseChoice,
    ResponseMessage,
    ResponseStream,
    Route,
    Router,
    StreamEnd,
    StreamError,
    Usage,
)
from providers import MockProvider

from ..conftest import make_request


class Recorder:
    """A class middleware that records when it sees the request, the stream and each chunk."""

    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        self.name = name
        self.log = log
        self.closed = False

    async def __call__(self, request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        self.log.append(("request", self.name))
        stream = await call_next(request, ctx)
        self.log.append(("response", self.name))
        return stream.observe(
            on_chunk=lambda chunk: self.log.append(("chunk", self.name)),
            on_end=lambda end: self.log.append(("end", self.name)),
        )

    async def aclose(self) -> None:
        self.closed = True


@given(st.integers(min_value=0, max_value=8))
async def test_middlewares_run_in_declared_order_in_and_reverse_out(count: int) -> None:
    log: list[tuple[str, str]] = []
    names = [str(i) for i in range(count)]
    pipeline = Pipeline(MockProvider(chunks=1), [Recorder(n, log) for n in names])
    async with pipeline.stream(make_request()) as stream:
        await stream.__anext__()
    assert [n for kind, n in log if kind == "request"] == names
    assert [n for kind, n in log if kind == "response"] == names[::-1]
    # A chunk reaches the innermost wrapper first, the outermost last; so does the end.
    assert [n for kind, n in log if kind == "chunk"] == names[::-1]
    assert [n for kind, n in log if kind == "end"] == names[::-1]


async def test_a_plain_function_is_a_middleware_and_may_rewrite_the_request() -> None:
    async def force_model(request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        request.model = "rewritten"
        ctx.notes["seen_by"] = "force_model"
        return await call_next(request, ctx)

    provider = MockProvider(chunks=2, record=True)
    ctx = Context()
    response = await Pipeline(provider, [force_model]).complete(make_request(model="asked"), ctx)
    assert provider.requests[0].model == "rewritten"
    assert response.model == "rewritten"
    assert ctx.notes == {"seen_by": "force_model"}


async def test_a_middleware_may_answer_without_calling_next() -> None:
    canned = ChatCompletion(
        "canned", 1, "m", [ResponseChoice(0, ResponseMessage(content="from cache"), "stop")]
    )

    async def short_circuit(request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        return ResponseStream.from_response(canned)

    provider = MockProvider()
    response = await Pipeline(provider, [short_circuit]).complete(make_request())
    assert response == canned
    assert provider.calls == 0


async def test_errors_raised_by_a_middleware_reach_the_caller_and_skip_the_provider() -> None:
    async def reject(request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        raise NotFoundError("no such model", param="model")

    provider = MockProvider()
    with pytest.raises(NotFoundError, match="no such model"):
        await Pipeline(provider, [reject]).handle(make_request())
    assert provider.calls == 0


async def test_context_records_first_chunk_time_and_usage(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ctx = Context()
    await Pipeline(MockProvider(ttft=0.25, chunk_delay=0.01)).complete(make_request(), ctx)
    assert ctx.ttft == pytest.approx(0.25)
    assert ctx.usage is not None
    assert ctx.usage.total_tokens == ctx.usage.prompt_tokens + ctx.usage.completion_tokens > 0


async def test_a_streaming_request_to_a_non_streaming_provider_is_served_whole() -> None:
    class WholeOnly(BaseProvider):
        supports_streaming = False

        def __init__(self) -> None:
            self.seen: list[bool] = []

        async def execute(self, request: Request, ctx: Context) -> ResponseStream:
            self.seen.append(request.stream)
            message = ResponseMessage(content="whole answer")
            return ResponseStream.from_response(
                ChatCompletion(
                    "x", 1, request.model, [ResponseChoice(0, message, "stop")], Usage(1, 2, 3)
                )
            )

    provider = WholeOnly()
    async with Pipeline(provider).stream(make_request(stream=True)) as stream:
        texts = [chunk.text async for chunk in stream]
    assert provider.seen == [False]
    assert "".join(texts) == "whole answer"


async def test_router_dispatches_by_model_and_sends_the_upstream_name() -> None:
    fast = MockProvider(name="fast-up", record=True)
    smart = MockProvider(name="smart-up", record=True)
    router = Router({"fast": Route(fast, "gpt-4o-mini"), "smart": Route(smart, "gpt-4o")})
    ctx = Context()
    response = await Pipeline(router).complete(make_request(model="smart"), ctx)
    assert smart.requests[0].model == "gpt-4o"
    assert fast.calls == 0
    assert response.model == "gpt-4o"
    assert (ctx.provider, ctx.upstream_model) == ("smart-up", "gpt-4o")
    assert router.models == ["fast", "smart"]


async def test_router_rejects_unknown_models_with_404() -> None:
    router = Router({"fast": Route(MockProvider(), "x")})
    with pytest.raises(NotFoundError, match="The model `nope` does not exist") as info:
        await Pipeline(router).handle(make_request(model="nope"))
    assert info.value.status == 404
    assert info.value.param == "model"


async def test_pipeline_aclose_closes_middlewares_and_providers() -> None:
    class Closing(MockProvider):
        closed = 0

        async def aclose(self) -> None:
            self.closed += 1

    provider = Closing()
    recorder = Recorder("r", [])
    async with Pipeline(Router({"a": Route(provider, "a"), "b": Route(provider, "b")}), [recorder]):
        pass
    assert recorder.closed
    assert provider.closed == 1  # shared by two routes, closed once


# -- every path closes the provider's stream -----------------------------------------------


async def consume(pipeline: Pipeline, how: str, stop_at: int) -> None:
    async with pipeline.stream(make_request()) as stream:
        count = 0
        async for _ in stream:
            count += 1
            if how == "break" and count == stop_at:
                break


@given(
    how=st.sampled_from(["success", "break", "error", "cancel"]),
    stop_at=st.integers(min_value=1, max_value=11),
    kinds=st.lists(st.sampled_from(["watch", "record", "passthrough"]), max_size=5),
)
async def test_aclose_reaches_the_provider_stream_on_every_path(
    how: str, stop_at: int, kinds: list[str]
) -> None:
    """Whatever the chain and however the consumer ends, the provider's stream is closed."""
    provider = MockProvider(
        chunks=10, chunk_delay=0.001, fail_after=stop_at if how == "error" else None
    )
    ends: list[StreamEnd] = []

    async def watch(request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        return (await call_next(request, ctx)).observe(on_end=ends.append)

    async def passthrough(request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        return await call_next(request, ctx)

    chain: list[Middleware] = [
        {"watch": watch, "passthrough": passthrough}.get(kind) or Recorder(kind, [])
        for kind in kinds
    ]
    pipeline = Pipeline(provider, chain)
    tasks_before = trio.lowlevel.current_statistics().tasks_living
    if how == "error":
        with pytest.raises(StreamError, match=f"after {stop_at} chunks"):
            await consume(pipeline, how, stop_at)
    elif how == "cancel":
        with trio.move_on_after(0.001 * stop_at + 0.0005):
            await consume(pipeline, how, stop_at)
    else:
        await consume(pipeline, how, stop_at)
    assert provider.open_streams == 0
    assert provider.closed_streams == 1
    assert len(ends) == kinds.count("watch")
    assert trio.lowlevel.current_statistics().tasks_living == tasks_before


async def test_cancelling_a_request_before_the_first_chunk_releases_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = MockProvider(ttft=10)
    with trio.move_on_after(1):
        await consume(Pipeline(provider), "success", 0)
    assert provider.open_streams == 0
    assert provider.closed_streams == 1


def test_a_context_made_outside_trio_is_stamped_when_the_request_arrives() -> None:
    ctx = Context()

    async def main() -> float:
        await trio.lowlevel.checkpoint()
        await Pipeline(MockProvider()).complete(make_request(), ctx)
        return trio.current_time()

    finished = trio.run(main)
    assert 0 <= finished - ctx.started < 60


class Preparing(MockProvider):
    """A provider with the optional `prepare` hook: notes when it is offered the batch."""

    def __init__(self) -> None:
        super().__init__("hi")
        self.prepared: list[tuple[str, int]] = []

    def prepare(self, request: Request, ctx: Context) -> None:
        pending = ctx._admission
        self.prepared.append((request.model, len(pending) if pending else 0))

        async def check(apply: bool) -> None:
            self.prepared.append(("checked", int(apply)))

        ctx.defer(check)


class Deferring:
    """A middleware that leaves one admission check pending."""

    joins_admission = True

    async def __call__(self, request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        async def check(apply: bool) -> None:
            pass

        ctx.defer(check)
        return await call_next(request, ctx)


async def test_a_provider_with_prepare_joins_the_first_admission_batch() -> None:
    provider = Preparing()
    router = Router({"mock-1": Route(provider, "mock-1")})
    pipeline = Pipeline(router, [Deferring()])
    assert await pipeline.complete(make_request()) is not None
    # Offered once, before the batch was awaited; its own check joined the batch.
    assert provider.prepared == [("mock-1", 1), ("checked", 1)]


async def test_prepare_is_not_called_without_a_batch() -> None:
    provider = Preparing()
    pipeline = Pipeline(Router({"mock-1": Route(provider, "mock-1")}))
    assert await pipeline.complete(make_request()) is not None
    assert provider.prepared == []
