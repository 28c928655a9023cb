"""Hot reload: a good file swaps the stack for new requests, a bad one is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import httpx
import structlog.testing
import trio

from llm_proxy import build_stack, load_config, serve
from llm_proxy._reload import LiveStack, listening_pids, reload_config
from pipeline import Context, Request, ResponseStream
from providers import MockProvider, ProviderConfig

from .conftest import WAIT, chat_body, eventually

ROOT = Path(__file__).resolve().parents[2]


class Traced(MockProvider):
    """A mock provider that notes when it is closed, by its configured text."""

    closed: ClassVar[list[str]] = []

    @classmethod
    def from_config(cls, config: ProviderConfig) -> Traced:
        return cls(
            text=config.options["text"],
            chunks=config.options.get("chunks", 2),
            chunk_delay=config.options.get("chunk_delay", 0.0),
            name=config.name,
        )

    async def execute(self, request: Request, ctx: Context) -> ResponseStream:
        return await super().execute(request, ctx)

    async def aclose(self) -> None:
        Traced.closed.append(self.text)


def config_text(model: str, text: str, *, chunk_delay: float = 0.0) -> str:
    return f"""
[[providers]]
name = "up"
kind = "tests.llm_proxy.test_reload:Traced"
options = {{ text = "{text}", chunks = 4, chunk_delay = {chunk_delay} }}

[[models]]
name = "{model}"
provider = "up"
"""


async def read_stream(http: httpx.AsyncClient, url: str, model: str, started: trio.Event) -> str:
    """The text of a streamed answer; `started` is set once its first event arrived."""
    text = ""
    async with http.stream(
        "POST", f"{url}/v1/chat/completions", json=chat_body(model, stream=True)
    ) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                started.set()
                delta = httpx.Response(200, content=line[6:]).json()["choices"]
                if delta and delta[0]["delta"].get("content"):
                    text += delta[0]["delta"]["content"]
    return text


async def answer(http: httpx.AsyncClient, url: str, model: str) -> httpx.Response:
    return await http.post(f"{url}/v1/chat/completions", json=chat_body(model))


async def test_a_reload_serves_the_new_file_while_running_streams_finish_on_the_old(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    Traced.closed.clear()
    file = tmp_path / "proxy.toml"
    file.write_text(config_text("old-model", "old answer", chunk_delay=0.2))
    config = load_config(file)
    loader = partial(reload_config, file, str(file))
    async with (
        LiveStack.open(build_stack(config), loader, config=config, handle_signals=False) as live,
        trio.open_nursery() as nursery,
    ):
        url = await nursery.start(
            partial(
                serve,
                live.pipeline,
                port=0,
                handle_signals=False,
                **live.serve_options(config.server),
            )
        )
        started = trio.Event()
        streamed: list[str] = []

        async def stream_old() -> None:
            streamed.append(await read_stream(http, url, "old-model", started))

        nursery.start_soon(stream_old)
        await started.wait()

        file.write_text(config_text("new-model", "new answer"))
        assert await live.reload()
        new = await answer(http, url, "new-model")
        assert new.json()["choices"][0]["message"]["content"] == "new answer"
        gone = await answer(http, url, "old-model")
        assert gone.status_code == 404
        models = (await http.get(f"{url}/v1/models")).json()["data"]
        assert [m["id"] for m in models] == ["new-model"]
        assert Traced.closed == []  # the old stack still serves its stream

        await eventually(lambda: bool(streamed))
        assert streamed == ["old answer"]
        await eventually(lambda: Traced.closed == ["old answer"])
        nursery.cancel_scope.cancel()
    assert Traced.closed == ["old answer", "new answer"]


async def test_a_file_with_errors_is_refused_and_the_running_stack_serves_on(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    Traced.closed.clear()
    file = tmp_path / "proxy.toml"
    file.write_text(config_text("model", "still here"))
    config = load_config(file)
    loader = partial(reload_config, file, str(file))
    async with (
        LiveStack.open(build_stack(config), loader, config=config, handle_signals=False) as live,
        trio.open_nursery() as nursery,
    ):
        url = await nursery.start(
            partial(
                serve,
                live.pipeline,
                port=0,
                handle_signals=False,
                **live.serve_options(config.server),
            )
        )
        file.write_text(config_text("model", "broken") + 'unknown_section = 1\nfallbacks = "x"\n')
        with structlog.testing.capture_logs() as logs:
            assert not await live.reload()
        [refusal] = [entry for entry in logs if entry["event"] == "reload_refused"]
        assert any("unknown key `unknown_section`" in line for line in refusal["errors"])
        ok = await answer(http, url, "model")
        assert ok.json()["choices"][0]["message"]["content"] == "still here"
        assert Traced.closed == []
        nursery.cancel_scope.cancel()


# -- through the command line ----------------------------------------------------------------


def serve_process(
    config: Path, *args: str, pid_file: Path | None = None
) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "llm_proxy.cli", "serve", "--config", str(config)]
    command += ["--port", "0", *args]
    if pid_file is not None:
        command += ["--pid-file", str(pid_file)]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert "is serving" in line, line + (process.stderr.read() if process.stderr else "")
    url = line.split(" at ")[1].removesuffix("/v1\n")
    return process, url


def reload_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_proxy.cli", "reload", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll `check` (another process changes what it sees) until it holds; fail after WAIT."""
    with trio.fail_after(WAIT):
        while not await check():  # noqa: ASYNC110 - the server is another process
            await trio.sleep(0.05)


async def serves(http: httpx.AsyncClient, url: str, model: str, text: str) -> bool:
    response = await answer(http, url, model)
    return (
        response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == text
    )


def stop(process: subprocess.Popen[Any]) -> str:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=WAIT)
    assert process.returncode == 0, stderr
    return str(stderr)


async def test_sighup_by_pid_file_reloads_and_does_not_end_the_server(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    file, pid_file = tmp_path / "proxy.toml", tmp_path / "proxy.pid"
    file.write_text(config_text("one", "first"))
    process, url = serve_process(file, pid_file=pid_file)
    try:
        assert int(pid_file.read_text()) == process.pid
        file.write_text(config_text("two", "second"))
        done = reload_command("--pid-file", str(pid_file))
        assert done.returncode == 0, done.stderr
        await until(partial(serves, http, url, "two", "second"))
        file.write_text("not toml [")
        assert reload_command("--pid-file", str(pid_file)).returncode == 0
        await trio.sleep(0.3)
        assert await serves(http, url, "two", "second")
        assert process.poll() is None
    finally:
        stderr = stop(process)
    assert "reloaded" in stderr
    assert "reload_refused" in stderr
    assert "not valid TOML" in stderr
    assert not pid_file.exists()


async def test_every_worker_reloads_when_signalled_by_port(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    file = tmp_path / "proxy.toml"
    file.write_text(config_text("one", "first") + "\n[server]\nallow_per_worker_state = true\n")
    process, url = serve_process(file, "--workers", "2")
    try:
        port = int(url.rsplit(":", 1)[1])
        assert len(listening_pids(port)) == 2
        file.write_text(
            config_text("two", "second") + "\n[server]\nallow_per_worker_state = true\n"
        )
        done = reload_command("--port", str(port))
        assert done.returncode == 0, done.stderr
        assert "asked process" in done.stdout
        # New connections land on either worker: every one of many answers is new.
        await until(partial(serves, http, url, "two", "second"))
        for _ in range(20):
            async with httpx.AsyncClient(timeout=WAIT) as fresh:
                assert await serves(fresh, url, "two", "second")
    finally:
        stop(process)
