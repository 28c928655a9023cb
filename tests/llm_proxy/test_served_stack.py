"""A stack built from configuration, served: auth, rate limits and metrics reach the client."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from llm_proxy import build_stack, parse_config

from .conftest import Start, chat_body, in_thread

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]

CONFIG = """
[log]
level = "warning"

[[providers]]
name = "local"
kind = "mock"
options = { text = "hi", chunks = 2 }

[[models]]
name = "small"
provider = "local"

[[models]]
name = "large"
provider = "local"

[[keys]]
id = "team"
key_env = "TEST_PROXY_KEY"
models = ["small"]
requests_per_minute = 2

[[keys]]
id = "ops"
key_env = "TEST_PROXY_OPS_KEY"
models = []
admin = true
"""


@pytest.fixture
async def url(start_server: Start, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TEST_PROXY_KEY", "sk-team-secret")
    monkeypatch.setenv("TEST_PROXY_OPS_KEY", "sk-ops-secret")
    stack = build_stack(parse_config(CONFIG, "proxy.toml"), "proxy.toml")
    return await start_server(stack.pipeline, models_for=stack.models_for, metrics=stack.metrics)


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20.0)


async def test_keys_models_and_limits_through_the_sdk(url: str) -> None:
    team, stranger = client(url, "sk-team-secret"), client(url, "sk-unknown")

    models = await in_thread(lambda: [m.id for m in team.models.list()])
    first = await in_thread(lambda: team.chat.completions.create(model="small", messages=USER))
    with pytest.raises(openai.AuthenticationError, match="Invalid API key"):
        await in_thread(lambda: stranger.chat.completions.create(model="small", messages=USER))
    with pytest.raises(openai.AuthenticationError, match="Invalid API key"):
        await in_thread(lambda: stranger.models.list())
    with pytest.raises(openai.PermissionDeniedError, match="may not use the model `large`"):
        await in_thread(lambda: team.chat.completions.create(model="large", messages=USER))
    await in_thread(lambda: team.chat.completions.create(model="small", messages=USER))
    with pytest.raises(
        openai.RateLimitError, match=r"requests per minute of this key \(limit 2,"
    ) as limited:
        await in_thread(lambda: team.chat.completions.create(model="small", messages=USER))
    team.close()
    stranger.close()

    assert models == ["small"]
    assert first.choices[0].message.content == "hi"
    headers = limited.value.response.headers
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-request-id"].startswith("req_")


async def test_unauthenticated_answers_carry_the_challenge(
    url: str, http: httpx.AsyncClient
) -> None:
    response = await http.post(f"{url}/v1/chat/completions", json=chat_body("small"))

    assert response.status_code == 401
    assert response.headers["www-authenticate"].lower().startswith("bearer")
    assert response.json()["error"]["type"] == "authentication_error"


async def test_metrics_count_what_was_served(url: str, http: httpx.AsyncClient) -> None:
    auth = {"authorization": "Bearer sk-team-secret"}
    await http.post(f"{url}/v1/chat/completions", json=chat_body("small"), headers=auth)
    await http.post(f"{url}/v1/chat/completions", json=chat_body("small"))

    metrics = await http.get(f"{url}/metrics", headers={"authorization": "Bearer sk-ops-secret"})

    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert (
        'llm_proxy_requests_total{api="chat",key_id="team",model="small",status="200"} 1.0'
        in metrics.text
    )
    assert 'model="small",status="401"} 1.0' in metrics.text
