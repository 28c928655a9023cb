"""Fixtures for the Redis tests: a real `redis-server`, and proxy processes that share it."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.redis_server import RedisServer
from middlewares import RedisStore


def redis_binary() -> str:
    """The `redis-server` to run; the test is skipped (with the reason) when there is none."""
    binary = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if binary is None:
        pytest.skip(
            "redis-server is not installed (`.ci/run` installs Debian's redis-server; "
            "locally: apt-get install redis-server)"
        )
    return binary


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh `redis-server` for one test, stopped afterwards."""
    server = RedisServer(redis_binary(), tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def redis_store(redis: RedisServer) -> AsyncIterator[RedisStore]:
    """An open `RedisStore` on the test's server, with a short timeout."""
    async with RedisStore(redis.url, timeout=0.5) as store:
        yield store


ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "several-instances.toml"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


KEYS = {
    "team-a": "sk-team-a",
    "ten": "sk-ten",
    "tokens": "sk-tokens",
    "after": "sk-after",
    "ops": "sk-ops",
}
"""Client keys by id: `team-a` is the example's; the others are the tests' own (`ops` may
read `/metrics`)."""
TEST_KEYS = """
[[keys]]
id = "ten"
key_sha256 = "{ten}"
requests_per_minute = 10

[[keys]]
id = "tokens"
key_sha256 = "{tokens}"
tokens_per_minute = 1000

[[keys]]
id = "after"
key_sha256 = "{after}"
requests_per_minute = 10

[[keys]]
id = "ops"
key_sha256 = "{ops}"
models = []
admin = true
""".format(**{name: sha256(key) for name, key in KEYS.items()})
"""Keys with small limits, each for one test, added to the example configuration."""
WAIT = 20.0
"""Seconds any one exchange with a proxy may take; only a failure waits that long."""


async def chat(
    http: httpx.AsyncClient, url: str, key: str, content: str = "Hello", **fields: Any
) -> httpx.Response:
    return await http.post(
        f"{url}/v1/chat/completions",
        headers={"authorization": f"Bearer {KEYS[key]}"},
        json={"model": "mock", "messages": [{"role": "user", "content": content}], **fields},
    )


def example_config(redis_url: str, *, on_error: str = "fail_open", extra: str = "") -> str:
    """The example configuration for several instances, on the test's Redis, plus `extra`."""
    text = EXAMPLE.read_text()
    for old, new in [
        ('url = "redis://127.0.0.1:6379/0"', f'url = "{redis_url}"'),
        ('on_error = "fail_open"', f'on_error = "{on_error}"'),
    ]:
        assert old in text, f"the example no longer says {old}"
        text = text.replace(old, new)
    return text + extra


class Proxy:
    """`python -m llm_proxy.cli serve --port 0` in a subprocess; its output goes to files.

    Files, not pipes: a server that logs every request would block on a full pipe.
    """

    def __init__(self, config: Path, *arguments: str, env: dict[str, str] | None = None) -> None:
        self.stdout = config.with_suffix(".out")
        self.stderr = config.with_suffix(".err")
        cli = [sys.executable, "-m", "llm_proxy.cli", "serve", "--config", str(config)]
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [*cli, "--port", "0", *arguments],
                cwd=ROOT,
                stdout=out,
                stderr=err,
                env={**os.environ, **(env or {})},
            )

    def url(self) -> str:
        """The base URL from the banner, once the server listens."""
        give_up = time.monotonic() + 30  # a cold interpreter on a busy machine
        while True:
            match = re.search(r"at (http://127\.0\.0\.1:\d+)/v1", self.stdout.read_text())
            if match:
                return match[1]
            if self.process.poll() is not None or time.monotonic() > give_up:
                self.kill()
                raise RuntimeError(f"the proxy did not start:\n{self.stderr.read_text()}")
            time.sleep(0.02)

    def stop(self) -> int:
        """SIGTERM, as a process manager would; the exit status (killed after a bound)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.wait()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.stderr.read_text()
