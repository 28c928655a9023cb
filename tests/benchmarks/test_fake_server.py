"""The fake upstream as a server: routing, records, disconnects, shutdown, process mode."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import msgspec
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from benchmarks._fake._answer import split
from benchmarks.fake_upstream import (
    READY,
    Disconnect,
    FakeConfig,
    FakeUpstream,
    fake_text,
    parse_args,
    run_fake_upstream,
)
from pipeline import Chunk

from ..helpers import parse_sse, read_events
from .bodies import CHAT, COMPLETIONS, MESSAGES, chat_body, messages_body

ROOT = Path(__file__).resolve().parents[2]


async def test_every_request_is_recorded(fake_upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        await client.post(CHAT, json=chat_body("hi"), headers={"authorization": "Bearer sk-t"})
        await client.get("/v1/models")
        await client.post(COMPLETIONS, content=b"not json")
    chat, models, broken = fake_upstream.requests
    assert (chat.number, chat.method, chat.path) == (0, "POST", CHAT)
    assert chat.headers["authorization"] == "Bearer sk-t"
    assert chat.headers["content-type"] == "application/json"
    assert chat.body == chat_body("hi")
    assert (models.number, models.method, models.path, models.body) == (
        1,
        "GET",
        "/v1/models",
        None,
    )
    assert (broken.number, broken.body) == (2, b"not json")
    fake_upstream.reset()
    assert fake_upstream.requests == []


async def test_recording_can_be_turned_off() -> None:
    async with (
        run_fake_upstream(FakeConfig(record=False)) as upstream,
        httpx.AsyncClient(base_url=upstream.url) as client,
    ):
        response = await client.post(CHAT, json=chat_body())
    assert response.status_code == 200
    assert upstream.requests == []


async def test_unknown_paths_are_404_and_wrong_methods_405(fake_upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        unknown = await client.post("/v1/images/generations", json={})
        get_chat = await client.get(CHAT)
        post_models = await client.post("/v1/models")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_url"
    assert (get_chat.status_code, get_chat.headers["allow"]) == (405, "POST")
    assert (post_models.status_code, post_models.headers["allow"]) == (405, "GET")
    assert set(get_chat.json()["error"]) == {"message", "type", "param", "code"}


async def test_a_client_leaving_mid_stream_is_recorded_and_stops_the_writer() -> None:
    # With a minute between chunks and a minute of graceful shutdown, leaving the block in
    # time proves the writer stopped when the client went away.
    config = FakeConfig(chunk_delay=60)
    with trio.fail_after(10):
        async with run_fake_upstream(config, graceful_timeout=60) as upstream:
            async with httpx.AsyncClient(base_url=upstream.url) as client:
                await client.post(CHAT, json=chat_body(), headers={"x-fake-chunk-delay": "0"})
                body = messages_body(stream=True)
                async with client.stream("POST", MESSAGES, json=body) as response:
                    await read_events(response.aiter_lines(), 4)
            disconnects = await upstream.wait_for_disconnects(1)
    # message_start, content_block_start, ping and the first delta are the first frame.
    assert disconnects == [Disconnect(request=1, path=MESSAGES, events_sent=4)]


async def test_complete_answers_record_no_disconnect(fake_upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        for path, body in ((CHAT, chat_body(stream=True)), (MESSAGES, messages_body(stream=True))):
            await client.post(path, json=body, headers={"x-fake-chunk-delay": "0.001"})
        await client.post(CHAT, json=chat_body(), headers={"x-fake-ttft": "0.001"})
    assert fake_upstream.disconnects == []


async def test_concurrent_streams_are_all_answered_whole(fake_upstream: FakeUpstream) -> None:
    results: list[str] = []

    async def one(client: httpx.AsyncClient) -> None:
        response = await client.post(CHAT, json=chat_body(stream=True))
        events = parse_sse(response.text)[:-1]
        results.append("".join(msgspec.json.decode(d, type=Chunk).text for _, d in events))

    with trio.fail_after(20):
        async with (
            httpx.AsyncClient(base_url=fake_upstream.url) as client,
            trio.open_nursery() as nursery,
        ):
            for _ in range(20):
                nursery.start_soon(one, client)
    assert results == [fake_text(200)] * 20


async def test_shutdown_closes_idle_connections_and_the_port() -> None:
    with trio.fail_after(10):
        # The client outlives the server: its kept-alive idle connection must not hold the
        # shutdown up.
        async with (
            httpx.AsyncClient() as client,
            run_fake_upstream(graceful_timeout=60) as upstream,
        ):
            assert (await client.get(f"{upstream.url}/v1/models")).status_code == 200
        async with httpx.AsyncClient() as fresh:
            with pytest.raises(httpx.ConnectError):
                await fresh.get(f"{upstream.url}/v1/models")


def test_command_line_knobs_build_the_config() -> None:
    config, host, port = parse_args(
        ["--port", "8123", "--chunks", "50", "--ttft", "0.5", "--no-finish", "--models", "a,b"]
    )
    assert (host, port) == ("127.0.0.1", 8123)
    assert config == FakeConfig(
        chunks=50, ttft=0.5, no_finish=True, models=("a", "b"), record=False
    )
    with pytest.raises(SystemExit):
        parse_args(["--chunks", "many"])


async def test_process_mode_serves_until_sigterm() -> None:
    command = [sys.executable, "-m", "benchmarks.fake_upstream", "--port", "0", "--chunks", "3"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await trio.lowlevel.open_process(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert process.stdout is not None
        with trio.fail_after(30):
            output = b""
            while b"\n" not in output:
                data = await process.stdout.receive_some()
                assert data, "the fake upstream exited before it was ready"
                output += data
            line = output.decode().splitlines()[0]
            assert line.startswith(READY)
            url = line.removeprefix(READY).strip()
            assert url.startswith("http://127.0.0.1:")
            async with httpx.AsyncClient(base_url=url) as client:
                response = await client.post(CHAT, json=chat_body(stream=True))
            assert len(parse_sse(response.text)) == 1 + 3 + 1 + 1
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@given(text=st.text(max_size=300), pieces=st.integers(min_value=1, max_value=400))
def test_split_makes_nonempty_pieces_that_join_to_the_text(text: str, pieces: int) -> None:
    parts = split(text, pieces)
    assert "".join(parts) == text
    assert len(parts) == min(pieces, len(text))
    assert all(parts)
    assert max(map(len, parts), default=0) - min(map(len, parts), default=0) <= 1
