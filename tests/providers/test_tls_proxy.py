"""A provider over TLS (the system store, a private CA in `ca_file`) and through a proxy."""

from __future__ import annotations

import json

import pytest
import trio

from http11 import PoolStatistics, Request, Responder, ServerConfig
from pipeline import ConfigError, Context, ProviderError
from providers import OpenAIProvider, ProviderConfig

from ..conftest import make_request
from ..http11.helpers import start_server
from ..http11.servers import ConnectProxy, raw_server

COMPLETION = {
    "id": "chatcmpl-tls",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-test",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "over TLS"},
            "finish_reason": "stop",
        }
    ],
}


@pytest.fixture(autouse=True)
def no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


async def answer(request: Request, responder: Responder) -> None:
    await responder.respond(
        200, [(b"content-type", b"application/json")], json.dumps(COMPLETION).encode()
    )


async def https_upstream(nursery: trio.Nursery, cert_files: tuple[str, str]) -> str:
    """An OpenAI-style upstream over https on 127.0.0.1, its certificate from the private CA."""
    certfile, keyfile = cert_files
    _, port = await start_server(nursery, answer, ServerConfig(certfile=certfile, keyfile=keyfile))
    return f"https://127.0.0.1:{port}/v1"


async def test_an_untrusted_certificate_is_a_502_naming_the_tls_error(
    nursery: trio.Nursery, server_cert_files: tuple[str, str]
) -> None:
    url = await https_upstream(nursery, server_cert_files)
    provider = OpenAIProvider(url)
    with pytest.raises(ProviderError, match=r"TLSError: TLS to 127\.0\.0\.1:\d+ failed: .*certif"):
        await provider.execute(make_request(stream=False), Context())
    assert provider.client.statistics() == PoolStatistics(0, 0, 0, 0)


async def test_the_tls_error_is_a_502_that_retrying_would_not_fix(
    nursery: trio.Nursery, server_cert_files: tuple[str, str]
) -> None:
    url = await https_upstream(nursery, server_cert_files)
    with pytest.raises(ProviderError) as info:
        await OpenAIProvider(url).execute(make_request(stream=True), Context())
    assert (info.value.status, info.value.code, info.value.retryable) == (502, "tls_error", False)
    assert info.value.upstream_status is None


async def test_a_ca_file_from_the_config_trusts_a_private_ca(
    nursery: trio.Nursery, server_cert_files: tuple[str, str], ca_file: str
) -> None:
    url = await https_upstream(nursery, server_cert_files)
    config = ProviderConfig(name="private", kind="openai", base_url=url, ca_file=ca_file)
    provider = OpenAIProvider.from_config(config)
    answer = await (await provider.execute(make_request(stream=False), Context())).collect()
    assert answer.text == "over TLS"
    assert provider.client.statistics() == PoolStatistics(1, 1, 0, 0)


def test_a_ca_file_that_cannot_be_read_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"provider `openai`: cannot read ca_file `/nowhere.pem`"):
        OpenAIProvider("https://api.example.com/v1", ca_file="/nowhere.pem")


async def test_https_goes_through_the_proxy_from_the_environment(
    nursery: trio.Nursery,
    server_cert_files: tuple[str, str],
    ca_file: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = await https_upstream(nursery, server_cert_files)
    proxy = ConnectProxy()
    proxy_port = await raw_server(nursery, proxy)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy_port}")
    provider = OpenAIProvider(url, ca_file=ca_file)
    answer = await (await provider.execute(make_request(stream=False), Context())).collect()
    assert answer.text == "over TLS"
    authority = url.removeprefix("https://").removesuffix("/v1")
    assert proxy.tunnels == [authority.encode()]

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    direct = OpenAIProvider(url, ca_file=ca_file)
    await (await direct.execute(make_request(stream=False), Context())).collect()
    assert proxy.tunnels == [authority.encode()]
