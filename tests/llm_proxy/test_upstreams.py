"""The server in front of the HTTP providers and the fake upstream, built from configuration.

Each API (OpenAI, Anthropic, completions) is one model of one stack; a test sets the
fake's knobs (`upstream.config`) before it sends its requests.
"""

from __future__ import annotations

import httpx
import pytest

from benchmarks.fake_upstream import FakeConfig, FakeUpstream
from llm_proxy import build_stack, parse_config

from .conftest import Start, chat_body

MODELS = ["gpt", "claude", "completion"]
KEY = "sk-upstream-0123456789abcdef"


def config(upstream_url: str, extra: str = "") -> str:
    return f"""
[log]
level = "error"

[retry]
max_attempts = 3
base_delay = 0.01

[[providers]]
name = "oa"
kind = "openai"
base_url = "{upstream_url}/v1"
api_key_env = "TEST_UPSTREAM_KEY"

[[providers]]
name = "an"
kind = "anthropic"
base_url = "{upstream_url}"
api_key_env = "TEST_UPSTREAM_KEY"

[[providers]]
name = "co"
kind = "completions"
base_url = "{upstream_url}"
api_key_env = "TEST_UPSTREAM_KEY"

[[models]]
name = "gpt"
provider = "oa"
upstream_model = "fake-gpt"

[[models]]
name = "claude"
provider = "an"
upstream_model = "fake-claude"

[[models]]
name = "completion"
provider = "co"
upstream_model = "fake-completions"
{extra}
"""


@pytest.fixture
def upstream(fake_upstream: FakeUpstream) -> FakeUpstream:
    return fake_upstream


@pytest.fixture
async def url(start_server: Start, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TEST_UPSTREAM_KEY", KEY)
    stack = build_stack(parse_config(config(upstream.url)))
    return await start_server(stack.pipeline, models_for=stack.models_for)


@pytest.mark.parametrize("model", MODELS)
async def test_an_error_right_after_the_opening_event_is_retried_and_answered_as_an_error(
    model: str, url: str, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    # OpenAI opens with a role chunk and Anthropic with message_start: neither is part of
    # the answer, so the failure right after them comes before anything reached the client.
    upstream.config = FakeConfig(stream_error_after=0)
    response = await http.post(f"{url}/v1/chat/completions", json=chat_body(model, stream=True))
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "upstream_error"
    assert len(upstream.requests) == 3


@pytest.mark.parametrize("model", MODELS)
async def test_an_upstream_503_stays_503_with_its_retry_after(
    model: str, url: str, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    upstream.config = FakeConfig(status=503, retry_after=7)
    response = await http.post(f"{url}/v1/chat/completions", json=chat_body(model))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    assert response.json()["error"]["type"] == "upstream_error"


@pytest.mark.parametrize("model", MODELS)
async def test_an_upstream_429_without_retry_after_gets_the_proxys_estimate(
    model: str, url: str, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    upstream.config = FakeConfig(status=429)
    response = await http.post(f"{url}/v1/chat/completions", json=chat_body(model))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"


async def test_other_upstream_5xx_are_a_bad_gateway_without_retry_after(
    url: str, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    upstream.config = FakeConfig(status=500)
    response = await http.post(f"{url}/v1/chat/completions", json=chat_body("gpt"))
    assert response.status_code == 502
    assert "retry-after" not in response.headers
