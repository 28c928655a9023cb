"""`/metrics` names key ids, models and their counts: with auth on, only admin keys read it."""

from __future__ import annotations

import httpx
import pytest

from llm_proxy import build_stack, parse_config

from .conftest import Start

CONFIG = """
[[providers]]
name = "mock"
kind = "mock"

[[models]]
name = "mock-1"
provider = "mock"

[[keys]]
id = "team-a"
key_env = "METRICS_TEST_TEAM_KEY"

[[keys]]
id = "ops"
key_env = "METRICS_TEST_OPS_KEY"
admin = true
"""


@pytest.fixture
async def url(start_server: Start, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("METRICS_TEST_TEAM_KEY", "sk-team")
    monkeypatch.setenv("METRICS_TEST_OPS_KEY", "sk-ops")
    stack = build_stack(parse_config(CONFIG))
    return await start_server(stack.pipeline, models_for=stack.models_for, metrics=stack.metrics)


async def test_metrics_need_a_key_when_auth_is_on(url: str, http: httpx.AsyncClient) -> None:
    response = await http.get(f"{url}/metrics")

    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert "team-a" not in response.text


async def test_a_key_that_is_not_an_admin_is_refused(url: str, http: httpx.AsyncClient) -> None:
    response = await http.get(f"{url}/metrics", headers={"authorization": "Bearer sk-team"})

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "admin_required"
    assert "llm_proxy_requests_total" not in response.text


async def test_an_admin_key_reads_the_metrics(url: str, http: httpx.AsyncClient) -> None:
    chat = {"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]}
    team = {"authorization": "Bearer sk-team"}
    assert (await http.post(f"{url}/v1/chat/completions", json=chat, headers=team)).is_success

    response = await http.get(f"{url}/metrics", headers={"authorization": "Bearer sk-ops"})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert (
        'llm_proxy_requests_total{api="chat",key_id="team-a",model="mock-1",status="200"} 1.0'
        in response.text
    )
