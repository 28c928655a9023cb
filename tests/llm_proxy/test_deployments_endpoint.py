"""Health you can see: `/health/deployments` (admins only with auth), per-deployment
metrics, and active health checks that open and close circuits."""

from __future__ import annotations

import httpx
import pytest
import trio
import trio.testing

from llm_proxy import build_stack, parse_config
from middlewares import HealthChecks, MemoryStore
from pipeline import ProviderError
from providers import MockProvider

from .conftest import Start, chat_body

CONFIG = """
[health]
failures = 2
cooldown = 30

[[providers]]
name = "east"
kind = "mock"

[[providers]]
name = "spill"
kind = "mock"

[[models]]
name = "gpt"
routing = "least_busy"
deployments = [
  { provider = "east", upstream_model = "gpt-4o", weight = 3, requests_per_minute = 500 },
  { provider = "spill", priority = 2 },
]

[[keys]]
id = "team-a"
key_env = "DEPLOY_TEST_TEAM_KEY"

[[keys]]
id = "ops"
key_env = "DEPLOY_TEST_OPS_KEY"
admin = true
"""


@pytest.fixture
async def url(start_server: Start, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DEPLOY_TEST_TEAM_KEY", "sk-team")
    monkeypatch.setenv("DEPLOY_TEST_OPS_KEY", "sk-ops")
    stack = build_stack(parse_config(CONFIG))
    return await start_server(stack.pipeline, **stack.serve_options(parse_config(CONFIG).server))


async def test_the_deployments_of_each_model_are_listed_for_admins(
    url: str, http: httpx.AsyncClient
) -> None:
    team = {"authorization": "Bearer sk-team"}
    ops = {"authorization": "Bearer sk-ops"}
    served = await http.post(f"{url}/v1/chat/completions", json=chat_body("gpt"), headers=team)
    assert served.status_code == 200
    refused = await http.get(f"{url}/health/deployments", headers=team)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "admin_required"
    listing = (await http.get(f"{url}/health/deployments", headers=ops)).json()
    [model] = listing["data"]
    assert (model["model"], model["routing"]) == ("gpt", "least_busy")
    east, spill = model["deployments"]
    assert east["name"] == "east/gpt-4o"
    assert (east["state"], east["priority"], east["weight"]) == ("closed", 1, 3.0)
    assert east["ttft"] is not None  # it served the request
    assert (spill["name"], spill["priority"]) == ("spill/gpt", 2)
    metrics = (await http.get(f"{url}/metrics", headers=ops)).text
    assert (
        'llm_proxy_deployment_requests_total{deployment="east/gpt-4o",model="gpt"} 1.0' in metrics
    )


async def test_active_checks_open_a_failing_deployment_and_close_it_again(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEPLOY_TEST_TEAM_KEY", "sk-team")
    monkeypatch.setenv("DEPLOY_TEST_OPS_KEY", "sk-ops")
    stack = build_stack(parse_config(CONFIG), "cfg")
    router = stack.pipeline.provider
    pool = router.routes["gpt"].provider  # type: ignore[attr-defined]
    east = stack.providers["east"]
    assert isinstance(east, MockProvider)
    broken = ProviderError("down", upstream_status=503)

    async def failing() -> None:
        raise broken

    east.validate = failing  # type: ignore[method-assign]
    async with HealthChecks([pool], {"east": 10.0}) as checks:
        await trio.sleep(21)
        assert checks.checks == 2
        assert [s.state for s in await pool.statuses()] == ["open", "closed"]

        async def healthy() -> None:
            return None

        east.validate = healthy  # type: ignore[method-assign]
        await trio.sleep(10)
        assert [s.state for s in await pool.statuses()] == ["closed", "closed"]
    assert isinstance(pool.store, MemoryStore)
