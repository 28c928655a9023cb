"""`llm-proxy serve --workers N`: N processes on one port, refused on the memory store."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest
import trio

from benchmarks.redis_server import RedisServer
from llm_proxy import parse_config
from llm_proxy.cli import _check_workers, main

from .conftest import KEYS, TEST_KEYS, WAIT, Proxy, chat, example_config


def workers_of(proxy: Proxy) -> list[int]:
    """The worker processes the proxy's parent process started."""
    pid = proxy.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        int(child)
        for child in children
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def start(redis: RedisServer, tmp_path: Path) -> Proxy:
    config = tmp_path / "workers.toml"
    config.write_text(example_config(redis.url, extra=TEST_KEYS))
    proxy = Proxy(config, "--workers", "2", env={"TEAM_A_KEY": KEYS["team-a"]})
    return proxy


async def test_two_workers_serve_one_port_and_share_a_limit(
    redis: RedisServer, tmp_path: Path
) -> None:
    proxy = start(redis, tmp_path)
    try:
        url = proxy.url()
        workers = workers_of(proxy)
        statuses: list[int] = []

        async def one(http: httpx.AsyncClient, i: int) -> None:
            statuses.append((await chat(http, url, "ten", f"request {i}")).status_code)

        with trio.fail_after(WAIT):
            async with httpx.AsyncClient(timeout=WAIT) as http, trio.open_nursery() as nursery:
                for i in range(30):
                    nursery.start_soon(one, http, i)
        assert proxy.stop() == 0
    finally:
        proxy.kill()
    assert len(workers) == 2
    assert sorted(statuses) == [200] * 10 + [429] * 20
    assert "serving with 2 worker processes" in proxy.stdout.read_text()
    assert proxy.log().count('"event":"listening"') == 2
    assert proxy.log().count('"event":"stopped"') == 2
    assert "Traceback" not in proxy.log()
    assert not any(alive(pid) for pid in workers)


async def test_a_worker_that_dies_stops_the_others_and_the_server_exits_1(
    redis: RedisServer, tmp_path: Path
) -> None:
    proxy = start(redis, tmp_path)
    try:
        proxy.url()
        first, second = workers_of(proxy)
        os.kill(first, signal.SIGKILL)
        with trio.move_on_after(WAIT):
            await trio.to_thread.run_sync(proxy.process.wait, abandon_on_cancel=True)
        assert proxy.process.poll() is not None, f"still running; its log:\n{proxy.log()}"
    finally:
        proxy.kill()
    assert proxy.process.returncode == 1
    assert "a worker failed; all workers were stopped" in proxy.log()
    assert not alive(second)


GOOD = """
[[providers]]
name = "local"
kind = "mock"

[[models]]
name = "small"
provider = "local"

[ratelimit]
requests_per_minute = 10
"""


def test_several_workers_on_the_memory_store_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(GOOD)

    assert main(["serve", "--config", str(path), "--workers", "2"]) == 2

    err = capsys.readouterr().err
    assert "2 workers on the memory store would each keep their own rate limits" in err
    assert '`[store] backend = "redis"`' in err
    assert "`server.allow_per_worker_state = true`" in err
    assert err.rstrip().endswith("at `server.workers`")


def test_per_worker_state_may_be_allowed_and_one_worker_needs_nothing() -> None:
    allowed = parse_config("[server]\nworkers = 4\nallow_per_worker_state = true\n" + GOOD)
    _check_workers(allowed, "proxy.toml", 4)
    _check_workers(parse_config(GOOD), "proxy.toml", 1)


def test_workers_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--workers", "0"])
    assert exited.value.code == 2
    assert "0 is not a positive number" in capsys.readouterr().err
