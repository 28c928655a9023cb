"""Throughput of the fake upstream itself, the baseline every proxy benchmark stands on.

Starts `python -m benchmarks.fake_upstream` as its own process, then sends a bounded
number of OpenAI chat requests from one httpx client (trio, `--concurrency` at once):
whole answers, then streams of `--chunks` content chunks. Prints requests per second,
client-side latency, and the server process's CPU time per request (from /proc), which
is what the fake adds to a benchmark that runs beside it.

    python -m benchmarks.bench_fake_upstream [--requests 2000] [--concurrency 8] [--chunks 50]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from benchmarks.fake_upstream import READY

ROOT = Path(__file__).resolve().parents[1]
BODY = {"model": "fake-gpt", "messages": [{"role": "user", "content": "benchmark"}]}


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def start_server(chunks: int) -> tuple[trio.Process, str]:
    """The fake upstream in its own process, and its URL once it is ready."""
    command = [sys.executable, "-m", "benchmarks.fake_upstream", "--chunks", str(chunks)]
    process = await trio.lowlevel.open_process(command, cwd=ROOT, stdout=subprocess.PIPE)
    assert process.stdout is not None
    output = b""
    try:
        with trio.fail_after(30):
            while b"\n" not in output:
                data = await process.stdout.receive_some()
                if not data:
                    raise RuntimeError("the fake upstream exited before it was ready")
                output += data
        line = output.decode().splitlines()[0]
        if not line.startswith(READY):
            raise RuntimeError(f"the fake upstream said {line!r} instead of being ready")
    except BaseException:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
        raise
    return process, line.removeprefix(READY).strip()


@asynccontextmanager
async def fake_upstream_process(chunks: int) -> AsyncIterator[tuple[trio.Process, str]]:
    """The fake upstream in its own process and its URL; stopped (SIGTERM, then kill) after."""
    process, url = await start_server(chunks)
    try:
        yield process, url
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def run_load(
    client: httpx.AsyncClient, stream: bool, requests: int, concurrency: int
) -> list[float]:
    """Send `requests` requests, `concurrency` at a time; the latency of each."""
    body = {**BODY, "stream": stream}
    latencies: list[float] = []
    remaining = iter(range(requests))

    async def worker() -> None:
        for _ in remaining:
            start = time.perf_counter()
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                async for _ in response.aiter_raw():
                    pass
                if response.status_code != 200:
                    raise RuntimeError(f"fake upstream answered {response.status_code}")
            latencies.append(time.perf_counter() - start)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return latencies


async def measure(
    requests: int, concurrency: int, chunks: int, limit: float
) -> list[dict[str, Any]]:
    rows = []
    async with fake_upstream_process(chunks) as (process, url):
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
            with trio.fail_after(limit):
                for stream in (False, True):
                    await run_load(client, stream, min(requests, 200), concurrency)
                    cpu_before = cpu_seconds(process.pid)
                    start = time.perf_counter()
                    latencies = await run_load(client, stream, requests, concurrency)
                    elapsed = time.perf_counter() - start
                    cpu = cpu_seconds(process.pid) - cpu_before
                    latencies.sort()
                    rows.append(
                        {
                            "mode": f"stream ({chunks} chunks)" if stream else "whole",
                            "requests": requests,
                            "concurrency": concurrency,
                            "requests_per_s": requests / elapsed,
                            "p50_ms": statistics.median(latencies) * 1e3,
                            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1e3,
                            "server_cpu_us_per_request": cpu / requests * 1e6,
                        }
                    )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| mode | requests | concurrency | requests/s | p50 ms | p99 ms | server CPU us/request |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['requests']} | {r['concurrency']} | {r['requests_per_s']:.0f} "
            f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['server_cpu_us_per_request']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per mode")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--chunks", type=int, default=50, help="content chunks per stream")
    parser.add_argument("--limit", type=float, default=120, help="give up after these seconds")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    rows = trio.run(measure, args.requests, args.concurrency, args.chunks, args.limit)
    print(json.dumps(rows, indent=2) if args.json else markdown(rows))


if __name__ == "__main__":
    main()
