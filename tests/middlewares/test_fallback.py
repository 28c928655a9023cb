"""Fallback: alternatives in order, by model name or explicit route, before the first chunk."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from middlewares import ApiKey, Fallback, Timeout
from pipeline import (
    AuthenticationError,
    Context,
    GatewayTimeoutError,
    Handler,
    Middleware,
    Pipeline,
    ProviderError,
    Request,
    ResponseStream,
    Route,
    Router,
)
from providers import MockProvider

from ..conftest import make_request
from .test_retry import Breaking


def down(name: str = "primary") -> MockProvider:
    """A provider whose every call fails with a retryable 503."""
    return MockProvider(name=name, error=ProviderError(f"{name} is down", upstream_status=503))


def router(**providers: MockProvider) -> Router:
    """A router serving each provider under its keyword, upstream model `<keyword>-up`."""
    return Router({model: Route(p, f"{model}-up") for model, p in providers.items()})


async def test_falls_back_to_another_model_through_the_router() -> None:
    main = down("main-provider")
    backup = MockProvider("from backup", name="backup-provider", record=True)
    pipeline = Pipeline(router(main=main, backup=backup), [Fallback({"main": ["backup"]})])
    ctx = Context()
    answer = await pipeline.complete(make_request(model="main"), ctx)
    assert answer.text == "from backup"
    assert [r.model for r in backup.requests] == ["backup-up"]
    assert main.calls == 1
    assert ctx.fallback == "backup"
    assert ctx.retries == 1
    assert (ctx.provider, ctx.upstream_model) == ("backup-provider", "backup-up")


async def test_a_route_alternative_is_called_directly_bypassing_the_rest_of_the_chain() -> None:
    seen: list[str] = []

    async def after_fallback(request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        seen.append(request.model)
        return await call_next(request, ctx)

    backup = MockProvider("direct", name="spare", record=True)
    fallback = Fallback({"main": [Route(backup, "spare-model")]})
    pipeline = Pipeline(router(main=down()), [fallback, after_fallback])
    ctx = Context()
    answer = await pipeline.complete(make_request(model="main"), ctx)
    assert answer.text == "direct"
    assert seen == ["main"]  # only the first attempt went down the chain
    assert [r.model for r in backup.requests] == ["spare-model"]
    assert ctx.fallback == "spare/spare-model"
    assert (ctx.provider, ctx.upstream_model) == ("spare", "spare-model")
    # The route's stream is tracked like the chain's: first-chunk time and usage are known.
    assert ctx.first_chunk_at is not None
    assert ctx.usage is not None
    assert ctx.usage.completion_tokens > 0


async def test_alternatives_are_tried_in_order_and_the_last_error_is_raised() -> None:
    first, second, third = down("first"), down("second"), down("third")
    fallback = Fallback({"first": ["second", Route(third, "third-up")]})
    ctx = Context()
    with pytest.raises(ProviderError, match="third is down"):
        await Pipeline(router(first=first, second=second), [fallback]).handle(
            make_request(model="first"), ctx
        )
    assert (first.calls, second.calls, third.calls) == (1, 1, 1)
    assert ctx.retries == 2
    assert [str(e) for e in ctx.retried_errors] == ["first is down", "second is down"]
    assert ctx.fallback is None


async def test_the_first_alternative_that_works_serves() -> None:
    first, second, third = down("first"), MockProvider("second"), MockProvider("third")
    fallback = Fallback({"first": ["second", "third"]})
    pipeline = Pipeline(router(first=first, second=second, third=third), [fallback])
    answer = await pipeline.complete(make_request(model="first"))
    assert answer.text == "second"
    assert third.calls == 0


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_errors_another_upstream_would_repeat_are_not_fallen_back(status: int) -> None:
    main = MockProvider(error=ProviderError("bad request", upstream_status=status))
    backup = MockProvider()
    pipeline = Pipeline(router(main=main, backup=backup), [Fallback({"main": ["backup"]})])
    with pytest.raises(ProviderError, match="bad request") as info:
        await pipeline.handle(make_request(model="main"))
    assert info.value.upstream_status == status
    assert backup.calls == 0


async def test_a_non_retryable_error_from_an_alternative_stops_the_line() -> None:
    second = MockProvider(error=AuthenticationError("the backup key is wrong"))
    third = MockProvider()
    fallback = Fallback({"first": ["second", "third"]})
    with pytest.raises(AuthenticationError, match="the backup key is wrong"):
        await Pipeline(router(first=down(), second=second, third=third), [fallback]).handle(
            make_request(model="first")
        )
    assert third.calls == 0


async def test_a_timeout_before_the_first_chunk_falls_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slow, backup = MockProvider(ttft=60), MockProvider("quick")
    middlewares: list[Middleware] = [Fallback({"slow": ["backup"]}), Timeout(first_token=5)]
    ctx = Context()
    answer = await Pipeline(router(slow=slow, backup=backup), middlewares).complete(
        make_request(model="slow"), ctx
    )
    assert answer.text == "quick"
    assert isinstance(ctx.retried_errors[0], GatewayTimeoutError)
    assert slow.open_streams == 0
    assert slow.closed_streams == 1


async def test_a_stream_that_breaks_before_its_first_chunk_falls_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    broken, backup = Breaking(breaks=1), MockProvider("backup")
    pipeline = Pipeline(router(main=broken, backup=backup), [Fallback({"main": ["backup"]})])
    answer = await pipeline.complete(make_request(model="main"))
    assert answer.text == "backup"
    assert broken.open_streams == 0
    assert broken.closed_streams == 1


async def test_nothing_falls_back_once_a_chunk_has_been_delivered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    broken, backup = Breaking(breaks=1, after=2), MockProvider()
    pipeline = Pipeline(router(main=broken, backup=backup), [Fallback({"main": ["backup"]})])
    received = 0
    with pytest.raises(ProviderError, match="connection reset"):
        async with pipeline.stream(make_request(model="main")) as stream:
            async for _ in stream:
                received += 1
    assert received == 2
    assert backup.calls == 0
    assert broken.open_streams == 0


async def test_no_alternative_is_tried_after_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    main = MockProvider(ttft=2, error=ProviderError("late and down", upstream_status=503))
    backup = MockProvider()
    ctx = Context(deadline=trio.current_time() + 1)
    pipeline = Pipeline(router(main=main, backup=backup), [Fallback({"main": ["backup"]})])
    with pytest.raises(ProviderError, match="late and down"):
        await pipeline.handle(make_request(model="main"), ctx)
    assert backup.calls == 0


async def test_models_without_alternatives_pass_through() -> None:
    main = down()
    with pytest.raises(ProviderError, match="primary is down"):
        await Pipeline(router(main=main), [Fallback({"other": ["main"]})]).handle(
            make_request(model="main")
        )
    assert main.calls == 1


async def test_cancellation_while_an_alternative_starts_closes_its_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backup = MockProvider(ttft=10)
    pipeline = Pipeline(router(main=down(), backup=backup), [Fallback({"main": ["backup"]})])
    with trio.move_on_after(1) as scope:
        await pipeline.handle(make_request(model="main"))
    assert scope.cancelled_caught
    assert backup.calls == 1
    assert backup.open_streams == 0


async def test_each_model_falls_back_through_its_list_in_order() -> None:
    fallback = Fallback({"main": ["backup", "last"], "backup": [], "last": []})
    assert {model: [a.name for a in alts] for model, alts in fallback.alternatives.items()} == {
        "main": ["backup", "last"]
    }
    backup = down("backup")
    last = MockProvider("last resort")
    pipeline = Pipeline(router(main=down(), backup=backup, last=last), [fallback])
    ctx = Context()
    answer = await pipeline.complete(make_request(model="main"), ctx)
    assert answer.text == "last resort"
    assert ctx.retries == 2
    assert ctx.fallback == "last"


async def test_a_fallback_the_key_may_not_use_is_skipped() -> None:
    down = ProviderError("main is down", upstream_status=503)
    main, backup = MockProvider(error=down), MockProvider("backup answer")
    pipeline = Pipeline(
        Router({"main": Route(main, "main"), "backup": Route(backup, "backup")}),
        [Fallback({"main": ["backup"]})],
    )
    ctx = Context()
    ctx.key = ApiKey("narrow", models=("main",))
    with pytest.raises(ProviderError, match="main is down"):
        await pipeline.complete(make_request(model="main"), ctx)
    assert backup.calls == 0
    ctx = Context()
    ctx.key = ApiKey("wide")
    assert (await pipeline.complete(make_request(model="main"), ctx)).text == "backup answer"
