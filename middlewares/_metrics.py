"""Metrics: Prometheus counters and histograms about every request, in a registry of their own.

`Metrics` holds the instruments and renders them as Prometheus text; `MetricsMiddleware`
records each request into them when it ends. Other middlewares bump the counters meant for
them (`metrics.store_errors`) or register their own instruments in `metrics.registry`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from pipeline import (
    API_NAMES,
    Context,
    Handler,
    Outcome,
    ProviderError,
    RateLimitError,
    Request,
    ResponseStream,
    StreamEnd,
)

from ._access_log import api_of, status_of

__all__ = ["Metrics", "MetricsMiddleware"]

OTHER = "other"
"""The label value for a model or key id outside the configured ones."""
NONE = "none"
"""The label value for a missing key id (no authentication) or upstream status (no answer)."""

_Metric = TypeVar("_Metric", Counter, Histogram, Gauge)
_RequestLabels = tuple[str, str, int, str, Outcome, str | None, bool, bool]
"""What decides the series a finished request counts in (see `Metrics._request_series`)."""
_RequestSeries = tuple[
    Counter, Histogram, Histogram | None, Counter | None, Counter | None, Counter | None
]

CACHE_STATUSES = frozenset({"hit", "miss", "bypass"})
APIS = frozenset({*API_NAMES, "completions"})
"""The `api` label's values: the server's doors (anything else is counted as `other`)."""

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """The proxy's Prometheus instruments, in a `CollectorRegistry` of their own.

    Each instance has its own registry (never the process-wide default), so two stacks, or
    two tests, never share counts. Serve `render()` with `content_type` at `/metrics`.

    Label values are bounded: a model or key id outside the configured ones is counted as
    `other` (clients choose the model they ask for; they must not be able to mint series),
    statuses are HTTP statuses, and nothing is labelled by request id.

    Instruments (names get the `namespace` prefix, counters the `_total` suffix):

    - `requests{model, key_id, status, api}`: finished requests; status as the access log
      has it (200, the error's status, 499 when the client went away), api the door the
      request came through (`chat`, `completions`, `messages`, `count_tokens`, `responses`,
      `embeddings`);
    - `request_duration_seconds{model, outcome}`: arrival to end (`complete`, `error`,
      `cancelled`);
    - `time_to_first_token_seconds{model}`: arrival to the provider's first chunk;
    - `tokens{model, key_id, kind}`: prompt and completion tokens from the reported usage;
    - `cache_lookups{model, result}`: `hit`, `miss` or `bypass`, from `ctx.cache_status`;
    - `rate_limited{key_id}`: requests the proxy rejected with a `RateLimitError` (429);
    - `upstream_errors{provider, upstream_status}`: every `ProviderError`, also those that a
      retry or fallback recovered from (upstream 429s count here, not as `rate_limited`);
    - `retries{model}`: retries and fallbacks (`ctx.retries`);
    - `store_errors{middleware, policy}`: shared-state store failures, bumped by the
      stateful middlewares: counted once per request from `ctx.store_errors`, or
      directly: `metrics.store_errors.labels("rate_limit", "fail_open").inc()`;
    - `deployment_requests{model, deployment}`: attempts sent to each deployment;
    - `deployment_errors{model, deployment}`: attempts that counted as its failure;
    - `deployment_time_to_first_token_seconds{model, deployment}`: from the attempt to
      its first chunk;
    - `deployment_circuit_state{model, deployment}`: 0 closed, 1 open, 2 half-open, as
      this instance last saw it;
    - `deployment_circuit_transitions{model, deployment, state}`: changes into each state
      this instance saw.

    Args:
      models: the model names clients may ask for; None accepts any (unbounded: only for
        stacks whose callers are trusted).
      key_ids: the configured key ids; None accepts any.
      namespace: the prefix of every metric name.
    """

    content_type: str = CONTENT_TYPE_LATEST
    """The content type of `render()`'s output."""

    def __init__(
        self,
        *,
        models: Iterable[str] | None = None,
        key_ids: Iterable[str] | None = None,
        namespace: str = "llm_proxy",
    ) -> None:
        self._models = frozenset(models) if models is not None else None
        self._key_ids = frozenset(key_ids) if key_ids is not None else None
        self.registry = registry = CollectorRegistry()
        # Bounded like the label values: one entry per series.
        self._children: dict[tuple[object, ...], Any] = {}
        self._requests: dict[_RequestLabels, _RequestSeries] = {}

        def counter(name: str, documentation: str, labels: Sequence[str]) -> Counter:
            return Counter(name, documentation, labels, namespace=namespace, registry=registry)

        def histogram(
            name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]
        ) -> Histogram:
            return Histogram(
                name, documentation, labels, namespace=namespace, registry=registry, buckets=buckets
            )

        self.requests = counter(
            "requests", "Finished requests.", ["model", "key_id", "status", "api"]
        )
        self.latency = histogram(
            "request_duration_seconds",
            "Seconds from a request's arrival to its end.",
            ["model", "outcome"],
            LATENCY_BUCKETS,
        )
        self.ttft = histogram(
            "time_to_first_token_seconds",
            "Seconds from a request's arrival to the provider's first chunk.",
            ["model"],
            TTFT_BUCKETS,
        )
        self.tokens = counter(
            "tokens", "Tokens by kind (prompt, completion).", ["model", "key_id", "kind"]
        )
        self.cache = counter("cache_lookups", "Cache lookups by result.", ["model", "result"])
        self.rate_limited = counter(
            "rate_limited", "Requests rejected by a rate limit (429).", ["key_id"]
        )
        self.upstream_errors = counter(
            "upstream_errors",
            "Errors from upstream providers, including retried ones.",
            ["provider", "upstream_status"],
        )
        self.retries = counter("retries", "Retries and fallbacks.", ["model"])
        self.store_errors = counter(
            "store_errors",
            "Shared-state store failures, by middleware and the policy applied.",
            ["middleware", "policy"],
        )

        deployment = ["model", "deployment"]
        self.deployment_requests = counter(
            "deployment_requests", "Attempts sent to each deployment.", deployment
        )
        self.deployment_errors = counter(
            "deployment_errors", "Attempts that counted as a deployment's failure.", deployment
        )
        self.deployment_ttft = histogram(
            "deployment_time_to_first_token_seconds",
            "Seconds from an attempt on a deployment to its first chunk.",
            deployment,
            TTFT_BUCKETS,
        )
        self.circuit_state = Gauge(
            "deployment_circuit_state",
            "Each deployment's circuit: 0 closed, 1 open, 2 half-open.",
            deployment,
            namespace=namespace,
            registry=registry,
        )
        self.circuit_transitions = counter(
            "deployment_circuit_transitions",
            "Circuit state changes seen, by the state entered.",
            [*deployment, "state"],
        )

    def render(self) -> bytes:
        """Every instrument, in the Prometheus text format (`content_type`)."""
        return generate_latest(self.registry)

    def model_label(self, model: str) -> str:
        """The label value for a model: itself if configured (or unbounded), else `other`."""
        return model if self._models is None or model in self._models else OTHER

    def key_label(self, key_id: str | None) -> str:
        """The label value for a key id: itself if configured (or unbounded), else `other`."""
        if key_id is None:
            return NONE
        return key_id if self._key_ids is None or key_id in self._key_ids else OTHER

    def record(self, request: Request, ctx: Context, end: StreamEnd) -> None:
        """Count one finished request: what `MetricsMiddleware` does when a request ends."""
        series = self.series
        model = self.model_label(request.model)
        key = self.key_label(ctx.key_id)
        api = api_of(request, ctx)
        ttft = ctx.ttft
        usage = ctx.usage
        labels = (
            model,
            key,
            status_of(end),
            api,
            end.outcome,
            ctx.cache_status,
            ttft is not None,
            usage is not None,
        )
        counted = self._requests.get(labels)
        if counted is None:
            counted = self._request_series(labels)
        requests, latency, ttft_series, prompt, completion, cache = counted
        requests.inc()
        latency.observe(trio.current_time() - ctx.started)
        if ttft_series is not None and ttft is not None:
            ttft_series.observe(ttft)
        if prompt is not None and completion is not None and usage is not None:
            prompt.inc(usage.prompt_tokens)
            completion.inc(usage.completion_tokens)
        if cache is not None:
            cache.inc()
        if ctx.retries:
            series(self.retries, model).inc(ctx.retries)
        error = end.error
        if isinstance(error, RateLimitError):
            series(self.rate_limited, key).inc()
        for middleware, policy in ctx.store_errors.items():
            series(self.store_errors, middleware, policy).inc()
        # Every upstream error counts, also those that a retry or fallback recovered from.
        for failure in (*ctx.retried_errors, error):
            if isinstance(failure, ProviderError):
                provider = failure.provider or ctx.provider or NONE
                upstream = NONE if failure.upstream_status is None else str(failure.upstream_status)
                series(self.upstream_errors, provider, upstream).inc()

    def _request_series(self, labels: _RequestLabels) -> _RequestSeries:
        """The series every request of one kind counts in, looked up once per kind.

        Only the series the request counts in are made: a series, once made, is
        exported (at zero), so none is made ahead of its first count.
        """
        model, key, status, api, outcome, cache_status, has_ttft, has_usage = labels
        series = self.series
        if api not in APIS:
            api = OTHER
        cache = None
        if cache_status is not None:
            result = cache_status if cache_status in CACHE_STATUSES else OTHER
            cache = series(self.cache, model, result)
        counted = (
            series(self.requests, model, key, str(status), api),
            series(self.latency, model, outcome.value),
            series(self.ttft, model) if has_ttft else None,
            series(self.tokens, model, key, "prompt") if has_usage else None,
            series(self.tokens, model, key, "completion") if has_usage else None,
            cache,
        )
        # Bounded like the series (labels from bounded sets); the cache status is free
        # text only to custom middlewares, and cleared whole past a generous bound.
        if len(self._requests) >= 4096:
            self._requests.clear()
        self._requests[labels] = counted
        return counted

    def series(self, metric: _Metric, *labels: str) -> _Metric:
        """`metric.labels(*labels)`, remembered.

        prometheus-client validates the labels and takes a lock on every `labels()` call,
        which would be most of what recording a request costs.
        """
        child: _Metric | None = self._children.get((metric, *labels))
        if child is None:
            child = self._children[(metric, *labels)] = metric.labels(*labels)
        return child


class MetricsMiddleware:
    """Record every request into a `Metrics` when it ends.

    Place it right after the access log, so that it counts every request, including those
    later middlewares reject or the cache answers.

    Args:
      metrics: where to record (a new, unbounded `Metrics` by default); share it with the
        server's `/metrics` endpoint and with the middlewares that bump its counters.
    """

    __slots__ = ("metrics",)

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics if metrics is not None else Metrics()

    async def __call__(self, request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        def record(end: StreamEnd) -> None:
            self.metrics.record(request, ctx, end)

        ctx.at_end(record, report=True)
        return await call_next(request, ctx)
