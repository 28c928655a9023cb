"""Client TLS (system store plus a private CA file) and proxies from the environment."""

from __future__ import annotations

import pytest
import trio
import trustme

from http11 import Client, PoolStatistics, ReadTimeout, Request, Responder, ServerConfig, TLSError
from http11._proxy_env import ProxySettings

from .helpers import start_server
from .servers import ConnectProxy, raw_server


async def hello(request: Request, responder: Responder) -> None:
    await responder.respond(200, [(b"x-target", request.target)], b"hello")


@pytest.fixture(autouse=True)
def no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


async def start_tls_server(nursery: trio.Nursery, cert_files: tuple[str, str]) -> int:
    certfile, keyfile = cert_files
    _, port = await start_server(nursery, hello, ServerConfig(certfile=certfile, keyfile=keyfile))
    return port


async def test_a_certificate_from_the_ca_file_is_trusted(
    nursery: trio.Nursery, server_cert_files: tuple[str, str], ca_file: str
) -> None:
    port = await start_tls_server(nursery, server_cert_files)
    client = Client(ca_file=ca_file, trust_env=False)
    response = await client.request("GET", f"https://127.0.0.1:{port}/")
    assert await response.read() == b"hello"
    assert client.statistics() == PoolStatistics(1, 1, 0, 0)


async def test_an_unknown_ca_is_a_clear_tls_error(
    nursery: trio.Nursery, server_cert_files: tuple[str, str]
) -> None:
    port = await start_tls_server(nursery, server_cert_files)
    client = Client(trust_env=False)
    with pytest.raises(TLSError, match=f"TLS to 127.0.0.1:{port} failed: .*certificate"):
        await client.request("GET", f"https://127.0.0.1:{port}/")
    assert client.statistics() == PoolStatistics(0, 0, 0, 0)


async def test_a_certificate_for_another_host_is_a_tls_error(
    nursery: trio.Nursery, ca: trustme.CA, ca_file: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cert = ca.issue_cert("elsewhere.example")
    folder = tmp_path_factory.mktemp("other")
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(keyfile))
    port = await start_tls_server(nursery, (str(certfile), str(keyfile)))
    with pytest.raises(TLSError, match=r"mismatch|match"):
        await Client(ca_file=ca_file, trust_env=False).request("GET", f"https://127.0.0.1:{port}/")


async def test_https_goes_through_a_connect_tunnel(
    nursery: trio.Nursery,
    server_cert_files: tuple[str, str],
    ca_file: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = await start_tls_server(nursery, server_cert_files)
    proxy = ConnectProxy()
    proxy_port = await raw_server(nursery, proxy)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy_port}")
    client = Client(ca_file=ca_file)
    assert await (await client.request("GET", f"https://127.0.0.1:{port}/")).read() == b"hello"
    assert proxy.tunnels == [b"127.0.0.1:%d" % port]


async def test_http_goes_to_the_proxy_in_absolute_form(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, proxy_port = await start_server(nursery, hello)
    monkeypatch.setenv("http_proxy", f"http://user:pw@127.0.0.1:{proxy_port}")
    client = Client()
    response = await client.request("GET", "http://upstream.invalid:8080/v1/x?q=1")
    assert response.header(b"x-target") == b"http://upstream.invalid:8080/v1/x?q=1"


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "*", "127.0.0.0/8", "example.org, 127.0.0.1"])
async def test_no_proxy_bypasses_the_proxy(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, no_proxy: str
) -> None:
    _, port = await start_server(nursery, hello)
    proxy = ConnectProxy()
    proxy_port = await raw_server(nursery, proxy)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy_port}")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    response = await Client().request("GET", f"http://127.0.0.1:{port}/direct")
    assert response.header(b"x-target") == b"/direct"
    assert proxy.tunnels == []


def test_no_proxy_matching_rules() -> None:
    settings = ProxySettings.from_environment(
        {"HTTPS_PROXY": "proxy:3128", "NO_PROXY": ".corp.example, internal, 10.0.0.0/8"}
    )
    assert settings.proxy_for("https", "api.openai.com") is not None
    assert settings.proxy_for("https", "a.corp.example") is None
    assert settings.proxy_for("https", "corp.example") is None
    assert settings.proxy_for("https", "notcorp.example") is not None
    assert settings.proxy_for("https", "internal") is None
    assert settings.proxy_for("https", "10.1.2.3") is None
    assert settings.proxy_for("http", "api.openai.com") is None  # no HTTP_PROXY set
    lower_wins = ProxySettings.from_environment(
        {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2"}
    )
    chosen = lower_wins.proxy_for("https", "x.example")
    assert chosen is not None
    assert (chosen.host, chosen.port) == ("lower", 2)


async def test_a_read_timeout_over_tls_is_a_read_timeout(
    nursery: trio.Nursery, server_cert_files: tuple[str, str], ca_file: str
) -> None:
    started = trio.Event()

    async def stalls(request: Request, responder: Responder) -> None:
        started.set()
        await trio.sleep_forever()

    certfile, keyfile = server_cert_files
    config = ServerConfig(certfile=certfile, keyfile=keyfile)
    _, port = await start_server(nursery, stalls, config)
    client = Client(ca_file=ca_file, trust_env=False, read_timeout=0.2)
    with trio.fail_after(20), pytest.raises(ReadTimeout, match=r"within 0\.2 s"):
        await client.request("GET", f"https://127.0.0.1:{port}/")
    assert started.is_set()
    assert client.statistics() == PoolStatistics(0, 0, 0, 0)
