"""The proxy in front of the fake upstream, end to end, driven by the official OpenAI SDK.

The stack is built from a TOML configuration as `llm-proxy serve --config` builds it. The
client always speaks OpenAI; behind the proxy the upstream speaks its provider kind's API
(Anthropic Messages, the legacy completions API), and the client cannot tell.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from benchmarks.fake_upstream import FakeUpstream, fake_text
from llm_proxy import build_stack, parse_config

from ..llm_proxy.conftest import Start, in_thread
from .conftest import API_ROOTS, KEY, KEY_ENV

SDK = Callable[[str], openai.OpenAI]
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]
TEXT = fake_text(200)  # the fake's default answer
PATHS = {
    "openai": "/v1/chat/completions",
    "anthropic": "/v1/messages",
    "completions": "/v1/completions",
}

CONFIG = """
[log]
level = "warning"

[[providers]]
name = "upstream"
kind = "{kind}"
base_url = "{base_url}"
api_key_env = "{key_env}"
timeout = 10

[[models]]
name = "chat"
provider = "upstream"
upstream_model = "fake-model"
"""


@pytest.fixture(params=["openai", "anthropic", "completions"])
def kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def proxy(
    kind: str, fake_upstream: FakeUpstream, start_server: Start, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The proxy's URL: a stack with one model, `chat`, served by the fake upstream."""
    monkeypatch.setenv(KEY_ENV, KEY)
    text = CONFIG.format(kind=kind, base_url=fake_upstream.url + API_ROOTS[kind], key_env=KEY_ENV)
    stack = build_stack(parse_config(text, "proxy.toml"), "proxy.toml")
    return await start_server(stack.pipeline, models_for=stack.models_for, metrics=stack.metrics)


async def test_a_whole_answer_through_the_proxy(
    kind: str, proxy: str, fake_upstream: FakeUpstream, sdk: SDK
) -> None:
    client = sdk(proxy)

    answer = await in_thread(lambda: client.chat.completions.create(model="chat", messages=USER))

    assert answer.choices[0].message.content == TEXT
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 50  # the fake's count: a token per 4 characters
    (seen,) = fake_upstream.requests
    assert seen.path == PATHS[kind]
    # The configured upstream model name travels to the upstream (the legacy API has none).
    if kind != "completions":
        assert seen.body["model"] == "fake-model"


async def test_a_stream_through_the_proxy(kind: str, proxy: str, sdk: SDK) -> None:
    client = sdk(proxy)

    chunks = await in_thread(
        lambda: list(client.chat.completions.create(model="chat", messages=USER, stream=True))
    )

    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT
    assert chunks[-1].choices[0].finish_reason == "stop"
    # The provider's usage chunk is kept from a client that did not ask for it.
    assert all(c.usage is None and c.choices for c in chunks)


async def test_an_upstream_refusal_reaches_the_sdk_with_its_message(
    proxy: str, fake_upstream: FakeUpstream, sdk: SDK
) -> None:
    fake_upstream.config = msgspec.structs.replace(fake_upstream.config, status=400)
    client = sdk(proxy)

    with pytest.raises(openai.BadRequestError, match=r"Fake upstream error \(status 400\)"):
        await in_thread(lambda: client.chat.completions.create(model="chat", messages=USER))
