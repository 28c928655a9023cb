"""The `[server]` limits reach the engine, and its refusals come back in OpenAI's shape."""

from __future__ import annotations

import json

import pytest

from llm_proxy import ServerConfig
from pipeline import Pipeline
from providers import MockProvider

from .conftest import Start
from .test_slow_clients import connect, read_all


@pytest.mark.parametrize(
    ("server", "head"),
    [
        (ServerConfig(max_header_bytes=1024), b"x-big: " + b"a" * 2000 + b"\r\n"),
        (ServerConfig(max_headers=4), b"".join(b"x-%d: y\r\n" % i for i in range(6))),
    ],
)
async def test_a_head_over_the_configured_limits_gets_a_431(
    start_server: Start, server: ServerConfig, head: bytes
) -> None:
    url = await start_server(Pipeline(MockProvider()), server=server)
    stream = await connect(url)
    await stream.send_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n" + head + b"\r\n")

    answer = await read_all(stream)

    assert answer.startswith(b"HTTP/1.1 431 ")
    error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == "request_header_fields_too_large"


async def test_a_head_within_the_limits_is_served(start_server: Start) -> None:
    url = await start_server(Pipeline(MockProvider()), server=ServerConfig(max_headers=8))
    stream = await connect(url)
    head = b"".join(b"x-%d: y\r\n" % i for i in range(6))
    await stream.send_all(
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n" + head + b"\r\n"
    )

    assert (await read_all(stream)).startswith(b"HTTP/1.1 200 ")
