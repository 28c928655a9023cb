"""Metrics: what each finished request counts, bounded labels, isolated registries."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from middlewares import Metrics, MetricsMiddleware, RateLimiter, Retry
from pipeline import (
    Context,
    Handler,
    Pipeline,
    ProviderError,
    RateLimitError,
    Request,
    ResponseStream,
)
from providers import MockProvider

from ..conftest import make_request
from .conftest import FlakyStore


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    """One sample's value (None if that series does not exist)."""
    return metrics.registry.get_sample_value(f"llm_proxy_{name}", labels)


def requests(metrics: Metrics, key_id: str, status: str) -> float | None:
    """The finished chat requests to `mock-1` counted for `key_id` with `status`."""
    return sample(
        metrics, "requests_total", model="mock-1", key_id=key_id, status=status, api="chat"
    )


async def test_a_complete_request_counts_status_latency_ttft_and_tokens(
    autojump_clock: trio.testing.MockClock,
) -> None:
    metrics = Metrics()
    ctx = Context(key_id="team-a")
    provider = MockProvider(chunks=2, ttft=0.3, chunk_delay=0.1)
    await Pipeline(provider, [MetricsMiddleware(metrics)]).complete(make_request(), ctx)
    assert ctx.usage is not None
    assert requests(metrics, "team-a", "200") == 1
    latency = sample(metrics, "request_duration_seconds_sum", model="mock-1", outcome="complete")
    assert latency == pytest.approx(0.3 + 4 * 0.1)
    assert sample(metrics, "time_to_first_token_seconds_sum", model="mock-1") == pytest.approx(0.3)
    assert sample(metrics, "time_to_first_token_seconds_count", model="mock-1") == 1
    prompt = sample(metrics, "tokens_total", model="mock-1", key_id="team-a", kind="prompt")
    completion = sample(metrics, "tokens_total", model="mock-1", key_id="team-a", kind="completion")
    assert (prompt, completion) == (ctx.usage.prompt_tokens, ctx.usage.completion_tokens)
    assert sample(metrics, "retries_total", model="mock-1") is None


async def test_render_is_prometheus_text_of_this_registry_only() -> None:
    first, second = Metrics(), Metrics()
    await Pipeline(MockProvider(), [MetricsMiddleware(first)]).complete(make_request())
    families = {f.name: f for f in text_string_to_metric_families(first.render().decode())}
    assert families["llm_proxy_requests"].samples[0].value == 1
    assert "text/plain" in first.content_type
    # Another instance, and the process-wide default registry, saw nothing.
    assert requests(second, "none", "200") is None
    assert REGISTRY.get_sample_value("llm_proxy_requests_total") is None


async def test_labels_are_bounded_by_the_configured_models_and_keys() -> None:
    middleware = MetricsMiddleware(Metrics(models=["mock-1"], key_ids=["team-a"]))
    pipeline = Pipeline(MockProvider(), [middleware])
    for model, key_id in [
        ("mock-1", "team-a"),
        ("made-up-1", "team-a"),
        ("made-up-2", "forged"),
        ("mock-1", None),
    ]:
        await pipeline.complete(make_request(model=model), Context(key_id=key_id))
    requests = {
        (s.labels["model"], s.labels["key_id"]): s.value
        for family in text_string_to_metric_families(middleware.metrics.render().decode())
        if family.name == "llm_proxy_requests"
        for s in family.samples
        if s.name == "llm_proxy_requests_total"
    }
    assert requests == {
        ("mock-1", "team-a"): 1,
        ("other", "team-a"): 1,
        ("other", "other"): 1,
        ("mock-1", "none"): 1,
    }


async def test_a_rate_limit_rejection_counts_as_429() -> None:
    async def limit(request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        raise RateLimitError("too many requests", retry_after=3)

    metrics = Metrics()
    ctx = Context(key_id="team-a")
    with pytest.raises(RateLimitError, match="too many requests"):
        await Pipeline(MockProvider(), [MetricsMiddleware(metrics), limit]).handle(
            make_request(), ctx
        )
    assert sample(metrics, "rate_limited_total", key_id="team-a") == 1
    assert requests(metrics, "team-a", "429") == 1
    assert sample(metrics, "upstream_errors_total", provider="mock", upstream_status="429") is None


async def test_upstream_errors_count_also_those_a_retry_recovered_from(
    autojump_clock: trio.testing.MockClock,
) -> None:
    metrics = Metrics()
    flaky = ProviderError("overloaded", upstream_status=503, provider="upstream-a")
    provider = MockProvider(error=flaky, error_count=2)
    pipeline = Pipeline(provider, [MetricsMiddleware(metrics), Retry(base_delay=0.1)])
    await pipeline.complete(make_request())
    assert (
        sample(metrics, "upstream_errors_total", provider="upstream-a", upstream_status="503") == 2
    )
    assert sample(metrics, "retries_total", model="mock-1") == 2
    assert requests(metrics, "none", "200") == 1


async def test_an_upstream_that_never_answered_has_no_status() -> None:
    metrics = Metrics()
    ctx = Context()
    ctx.provider = "upstream-b"
    provider = MockProvider(error=ProviderError("connection refused"))
    with pytest.raises(ProviderError, match="connection refused"):
        await Pipeline(provider, [MetricsMiddleware(metrics)]).handle(make_request(), ctx)
    assert (
        sample(metrics, "upstream_errors_total", provider="upstream-b", upstream_status="none") == 1
    )
    assert requests(metrics, "none", "502") == 1


async def test_cache_results_are_read_from_the_context() -> None:
    async def cache(request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        ctx.cache_status = request.messages[0].text
        return await call_next(request, ctx)

    metrics = Metrics()
    pipeline = Pipeline(MockProvider(), [MetricsMiddleware(metrics), cache])
    for status in ["hit", "hit", "miss", "bypass", "weird"]:
        await pipeline.complete(make_request(status))
    counts = {
        result: sample(metrics, "cache_lookups_total", model="mock-1", result=result)
        for result in ["hit", "miss", "bypass", "other"]
    }
    assert counts == {"hit": 2, "miss": 1, "bypass": 1, "other": 1}


async def test_a_cancelled_request_counts_as_499(autojump_clock: trio.testing.MockClock) -> None:
    metrics = Metrics()
    provider = MockProvider(chunks=10, chunk_delay=1)
    with trio.move_on_after(2.5):
        async with Pipeline(provider, [MetricsMiddleware(metrics)]).stream(
            make_request()
        ) as stream:
            async for _ in stream:
                pass
    assert requests(metrics, "none", "499") == 1
    latency = sample(metrics, "request_duration_seconds_sum", model="mock-1", outcome="cancelled")
    assert latency == pytest.approx(2.5)
    assert provider.open_streams == 0


def test_other_middlewares_bump_the_store_error_counter() -> None:
    metrics = Metrics()
    metrics.store_errors.labels("rate_limit", "fail_open").inc()
    metrics.store_errors.labels("rate_limit", "fail_open").inc()
    metrics.store_errors.labels("cache", "fail_closed").inc()
    text = metrics.render().decode()
    assert 'llm_proxy_store_errors_total{middleware="rate_limit",policy="fail_open"} 2.0' in text
    assert 'llm_proxy_store_errors_total{middleware="cache",policy="fail_closed"} 1.0' in text


async def test_store_failures_noted_by_a_middleware_are_counted_once_per_request() -> None:
    metrics = Metrics()
    limiter = RateLimiter(FlakyStore(), requests_per_minute=5, on_error="fail_open")
    pipeline = Pipeline(MockProvider(), [MetricsMiddleware(metrics), limiter])
    for _ in range(3):
        await pipeline.complete(make_request())
    text = metrics.render().decode()
    assert 'llm_proxy_store_errors_total{middleware="rate limiter",policy="fail_open"} 3.0' in text
