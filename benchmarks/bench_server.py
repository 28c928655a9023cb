"""What the HTTP server costs per request, with the mock provider behind it.

Two measurements:

- *app*: the application called directly as the engine calls it (no sockets), for a whole
  answer and a 50-chunk stream, plus the disconnect watcher (a nursery and a task) alone.
- *http*: `llm-proxy serve` in a subprocess on 127.0.0.1 with zero-delay mock models and
  the recommended middleware chain its configuration asks for (access log at `warning`,
  metrics, retry, timeout), driven by one httpx client: sequential requests, then 4 at a
  time. The server's CPU time (from /proc) divided by the requests is its cost per
  request, whatever the client costs.

    python -m benchmarks.bench_server [--requests 2000] [--chunks 50]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import msgspec
import trio

from benchmarks.bench_fake_upstream import cpu_seconds
from http11 import Request as HTTPRequest
from llm_proxy import ProxyApp
from pipeline import Pipeline, decode_request
from providers import MockProvider

Headers = list[tuple[bytes, bytes]]

CONFIG = """
[log]
level = "warning"

[[providers]]
name = "whole"
kind = "mock"
options = {{ chunks = 1 }}

[[providers]]
name = "stream"
kind = "mock"
options = {{ chunks = {chunks}, text = "{text}" }}

[[models]]
name = "whole"
provider = "whole"

[[models]]
name = "stream"
provider = "stream"
"""


def body(model: str, stream: bool) -> bytes:
    return msgspec.json.encode(
        {"model": model, "stream": stream, "messages": [{"role": "user", "content": "benchmark"}]}
    )


# -- the app alone ------------------------------------------------------------------------


async def app_cost(requests: int, chunks: int) -> list[tuple[str, float, float]]:
    """Microseconds per request: the pipeline alone, and the app around it."""
    headers = [(b"content-type", b"application/json")]

    class NullResponder:
        """Takes the answer and throws it away, as a socket that is always writable would."""

        started = False
        shutting_down = False

        async def respond(self, status: int, head: Headers, body: bytes = b"") -> None:
            await trio.lowlevel.checkpoint()

        async def start(self, status: int, head: Headers) -> None:
            await trio.lowlevel.checkpoint()

        async def write(self, data: bytes) -> None:
            pass

        async def end(self) -> None:
            await trio.lowlevel.checkpoint()

    def through_app(app: ProxyApp, payload: bytes) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            request = HTTPRequest(
                b"POST", b"/v1/chat/completions", headers, "1.1", True, payload, None
            )
            await app(request, NullResponder())

        return run

    def pipeline_only(pipeline: Pipeline, payload: bytes) -> Callable[[], Awaitable[None]]:
        request = decode_request(payload)

        async def run() -> None:
            async with await pipeline.handle(request) as stream:
                async for _ in stream:
                    pass

        return run

    async def watcher() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()

    async def per_request(fn: Callable[[], Awaitable[None]]) -> float:
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(requests):
                await fn()
            samples.append((time.perf_counter() - start) / requests * 1e6)
        return statistics.median(samples)

    rows = []
    for label, n, stream in (("whole answer", 1, False), (f"{chunks}-chunk stream", chunks, True)):
        pipeline = Pipeline(MockProvider("x" * n * 4, chunks=n))
        payload = body("m", stream)
        base = await per_request(pipeline_only(pipeline, payload))
        app = await per_request(through_app(ProxyApp(pipeline), payload))
        rows.append((label, base, app))
    rows.append(("disconnect watcher alone (nursery + task)", 0.0, await per_request(watcher)))
    return rows


# -- over HTTP ---------------------------------------------------------------------------------


async def http_cost(
    url: str, pid: int, requests: int, concurrency: int, stream: bool
) -> dict[str, Any]:
    payload = body("stream" if stream else "whole", stream)
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def one() -> None:
            start = time.perf_counter()
            response = await client.post(
                "/v1/chat/completions",
                content=payload,
                headers={"content-type": "application/json"},
            )
            await response.aread()
            assert response.status_code == 200
            latencies.append(time.perf_counter() - start)

        for _ in range(100):  # warm up connections and caches
            await one()
        latencies.clear()

        async def worker(count: int) -> None:
            for _ in range(count):
                await one()

        cpu = cpu_seconds(pid)
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker, requests // concurrency)
        wall = time.perf_counter() - start
        cpu = cpu_seconds(pid) - cpu
    done = len(latencies)
    return {
        "mode": f"{'stream' if stream else 'whole'}, {concurrency} at a time",
        "requests": done,
        "requests_per_s": done / wall,
        "server_cpu_us": cpu / done * 1e6,
        "p50_ms": statistics.median(latencies) * 1e3,
    }


async def measure_http(requests: int, chunks: int) -> list[dict[str, Any]]:
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as config:
        config.write(CONFIG.format(chunks=chunks, text="x" * chunks * 4))
        config.flush()
        process = await trio.lowlevel.open_process(
            [
                sys.executable,
                "-m",
                "llm_proxy.cli",
                "serve",
                "--config",
                config.name,
                "--port",
                "0",
            ],
            stdout=subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            output = b""
            with trio.fail_after(30):
                while not (match := re.search(rb"at (http://127\.0\.0\.1:\d+)/v1", output)):
                    data = await process.stdout.receive_some()
                    if not data:
                        raise RuntimeError("llm-proxy serve exited before it was ready")
                    output += data
            url = match[1].decode()
            rows = []
            for stream in (False, True):
                for concurrency in (1, 4):
                    rows.append(await http_cost(url, process.pid, requests, concurrency, stream))
            return rows
        finally:
            process.terminate()
            with trio.move_on_after(30):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests per HTTP scenario")
    parser.add_argument("--chunks", type=int, default=50, help="content chunks per stream")
    args = parser.parse_args(argv)
    app_rows = trio.run(app_cost, args.requests, args.chunks)
    print("| in process | pipeline us/request | with the app us/request | app adds |")
    print("|---|---:|---:|---:|")
    for name, base, total in app_rows:
        print(f"| {name} | {base:.1f} | {total:.1f} | {total - base:.1f} |")
    rows = trio.run(measure_http, args.requests, args.chunks)
    print("\n| over HTTP | requests | requests/s | server CPU us/request | p50 ms |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['requests']} | {r['requests_per_s']:.0f} "
            f"| {r['server_cpu_us']:.0f} | {r['p50_ms']:.2f} |"
        )


if __name__ == "__main__":
    main()
