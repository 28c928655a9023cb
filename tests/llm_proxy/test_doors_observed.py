"""The access log and the request counter name the door each request came through."""

from __future__ import annotations

from typing import Any

import httpx

from middlewares import AccessLog, Metrics, MetricsMiddleware
from pipeline import Context, Pipeline
from providers import MockProvider

from ..conftest import Lines, make_request
from .conftest import Start

USER: list[Any] = [{"role": "user", "content": "Hello"}]
DOORS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {"messages": USER}),
    "completions": ("/v1/completions", {"prompt": "Hello"}),
    "messages": ("/v1/messages", {"max_tokens": 20, "messages": USER}),
    "count_tokens": ("/v1/messages/count_tokens", {"messages": USER}),
    "responses": ("/v1/responses", {"input": "Hello"}),
    "embeddings": ("/v1/embeddings", {"input": "Hello"}),
}


async def test_every_door_is_named_in_the_access_log_and_the_request_counter(
    start_server: Start, http: httpx.AsyncClient, lines: Lines
) -> None:
    metrics = Metrics(models=["m"])
    url = await start_server(Pipeline(MockProvider(), [AccessLog(), MetricsMiddleware(metrics)]))

    for path, body in DOORS.values():
        response = await http.post(f"{url}{path}", json={"model": "m", **body})
        assert response.status_code == 200, response.text

    logged = [event["api"] for event in lines.events() if event["event"] == "request"]
    assert logged == list(DOORS)
    for door in DOORS:
        labels = {"model": "m", "key_id": "none", "status": "200", "api": door}
        assert metrics.registry.get_sample_value("llm_proxy_requests_total", labels) == 1


async def test_a_call_from_code_is_named_by_the_api_it_speaks(lines: Lines) -> None:
    metrics = Metrics()
    pipeline = Pipeline(MockProvider(), [AccessLog(), MetricsMiddleware(metrics)])

    await pipeline.complete(make_request(model="m"))

    assert lines.events()[0]["api"] == "chat"
    labels = {"model": "m", "key_id": "none", "status": "200", "api": "chat"}
    assert metrics.registry.get_sample_value("llm_proxy_requests_total", labels) == 1


async def test_the_api_label_is_bounded() -> None:
    metrics = Metrics()
    pipeline = Pipeline(MockProvider(), [MetricsMiddleware(metrics)])
    ctx = Context()
    ctx.door = "a-door-of-someone-elses"

    await pipeline.complete(make_request(model="m"), ctx)

    labels = {"model": "m", "key_id": "none", "status": "200", "api": "other"}
    assert metrics.registry.get_sample_value("llm_proxy_requests_total", labels) == 1
