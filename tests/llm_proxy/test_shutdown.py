"""Shutdown: stop accepting, let running streams finish within the grace period, close."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
import structlog
import structlog.testing
import trio

from llm_proxy import serve
from pipeline import Outcome, Pipeline, StreamEnd
from providers import MockProvider

from .conftest import WAIT, chat_body

ROOT = Path(__file__).resolve().parents[2]


class ClosableMock(MockProvider):
    """A mock provider that records being closed, as a pooled HTTP provider would be."""

    closed = False

    async def aclose(self) -> None:
        self.closed = True


async def refused(url: str) -> bool:
    """Whether a new connection to the server is refused."""
    async with httpx.AsyncClient() as fresh:
        try:
            await fresh.get(f"{url}/healthz")
        except httpx.ConnectError:
            return True
        except httpx.RemoteProtocolError:
            # Accepted as the listener closed, then closed unanswered: not refused yet.
            return False
    return False


async def wait_until_refused(url: str) -> None:
    with trio.fail_after(WAIT):
        while True:
            if await refused(url):
                return
            await trio.sleep(0.01)


async def test_running_streams_finish_after_shutdown_starts(http: httpx.AsyncClient) -> None:
    provider = ClosableMock(chunks=10, chunk_delay=0.1)
    stop = trio.Event()
    events: list[str] = []
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(
                partial(
                    serve,
                    Pipeline(provider),
                    port=0,
                    handle_signals=False,
                    shutdown_trigger=stop.wait,
                    grace_period=WAIT,
                )
            )
            async with http.stream(
                "POST", f"{url}/v1/chat/completions", json=chat_body(stream=True)
            ) as response:
                lines = response.aiter_lines()
                async for line in lines:
                    if line.startswith("data: "):
                        events.append(line)
                        break
                stop.set()
                await wait_until_refused(url)
                events.extend([line async for line in lines if line.startswith("data: ")])
            # serve() returns once the stream is done, not after the grace period (WAIT).

    assert len(events) == 10 + 2  # ten pieces of text, the finish, [DONE]
    assert events[-1] == "data: [DONE]"
    assert provider.closed
    assert provider.open_streams == 0


async def test_streams_still_running_after_the_grace_period_end_with_a_shutdown_error(
    http: httpx.AsyncClient,
) -> None:
    provider = ClosableMock(chunks=100, chunk_delay=0.2)
    ends: list[StreamEnd] = []

    async def record(request, ctx, call_next):  # type: ignore[no-untyped-def]
        return (await call_next(request, ctx)).observe(on_end=ends.append)

    stop = trio.Event()
    with trio.fail_after(WAIT), structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(
                partial(
                    serve,
                    Pipeline(provider, [record]),
                    port=0,
                    handle_signals=False,
                    shutdown_trigger=stop.wait,
                    grace_period=0.3,
                )
            )
            async with http.stream(
                "POST", f"{url}/v1/chat/completions", json=chat_body(stream=True)
            ) as response:
                stop.set()
                body = await response.aread()

    # Not a client hang-up: the stream ends with the door's error event, saying why.
    last = body.rstrip(b"\n").rpartition(b"\n\n")[2]
    assert last.startswith(b"data: ")
    error = json.loads(last.removeprefix(b"data: "))["error"]
    assert error["code"] == "server_shutting_down"
    assert "shutting down" in error["message"]
    assert b"[DONE]" not in body
    assert [e["event"] for e in logs].count("stream_cut_by_shutdown") == 1
    assert ends[0].outcome is Outcome.CANCELLED
    assert ends[0].chunks < 100
    assert provider.open_streams == 0
    assert provider.closed


class CliServer:
    """`python -m llm_proxy.cli serve` in a subprocess, with its output collected."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.stdout = b""
        self.stderr = b""

    async def collect(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._drain, self.process.stderr, "stderr")
            await self._drain(self.process.stdout, "stdout")

    async def _drain(self, stream: trio.abc.ReceiveStream, name: str) -> None:
        while data := await stream.receive_some():
            setattr(self, name, getattr(self, name) + data)

    async def url(self) -> str:
        with trio.fail_after(30):  # a cold interpreter on a busy machine
            while True:
                match = re.search(rb"at (http://127\.0\.0\.1:\d+)/v1", self.stdout)
                if match:
                    return match[1].decode()
                await trio.sleep(0.02)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
async def test_cli_server_drains_and_exits_0_on_a_signal(
    signum: signal.Signals, nursery: trio.Nursery
) -> None:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "llm_proxy.cli", "serve", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    server = CliServer(process)
    try:
        await nursery.start(server.collect)
        url = await server.url()
        events: list[str] = []
        async with (
            httpx.AsyncClient(timeout=WAIT) as http,
            http.stream(
                "POST", f"{url}/v1/chat/completions", json=chat_body("mock-slow", stream=True)
            ) as response,
        ):
            lines = response.aiter_lines()
            async for line in lines:
                if line.startswith("data: "):
                    events.append(line)
                    break
            process.send_signal(signum)
            events.extend([line async for line in lines if line.startswith("data: ")])
        with trio.fail_after(WAIT):
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 0
    assert events[-1] == "data: [DONE]"
    assert len(events) == 24 + 2  # mock-slow's 24 pieces, finish, [DONE]
    stdout = server.stdout.decode()
    assert "models: mock-fast, mock-slow, mock-echo" in stdout
    assert f"curl {url}/v1/chat/completions" in stdout
    stderr = server.stderr.decode()
    assert "shutdown_started" in stderr
    assert "Traceback" not in stderr
    assert "WARNING" not in stderr  # loopback: no exposure warning
