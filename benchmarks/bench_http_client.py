"""httpx against httpx2 as the providers' upstream client, on trio over loopback.

The providers moved from httpx 0.28 (httpcore 1.0) to httpx2 because httpcore 1.0's pool
leaks a connection for every request cancelled while it waits for one. This measures
what the move costs: the fake upstream runs in its own process, and one pooled client of
each library sends a bounded number of whole-answer requests, one at a time and 32 at a
time, then streams. The client's CPU time per request (this process only) is what a
provider pays for its HTTP client.

    python -m benchmarks.bench_http_client [--requests 1000] [--chunks 20]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import httpx
import httpx2
import trio

from benchmarks.bench_fake_upstream import fake_upstream_process

BODY = {"model": "fake-gpt", "messages": [{"role": "user", "content": "benchmark"}]}
CLIENTS: dict[str, Any] = {"httpx 0.28": httpx, "httpx2 2.16": httpx2}


async def load(client: Any, stream: bool, requests: int, concurrency: int) -> None:
    """Send `requests` requests, `concurrency` at a time, reading every answer whole."""
    body = {**BODY, "stream": stream}
    remaining = iter(range(requests))

    async def worker() -> None:
        for _ in remaining:
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                async for _ in response.aiter_raw():
                    pass
                if response.status_code != 200:
                    raise RuntimeError(f"fake upstream answered {response.status_code}")

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)


async def measure(requests: int, chunks: int, limit: float) -> list[dict[str, Any]]:
    rows = []
    async with fake_upstream_process(chunks) as (_, url):
        with trio.fail_after(limit):
            for name, module in CLIENTS.items():
                limits = module.Limits(max_connections=100, max_keepalive_connections=100)
                async with module.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
                    for stream in (False, True):
                        for concurrency in (1, 32):
                            await load(client, stream, min(requests, 100), concurrency)
                            cpu, start = time.process_time(), time.perf_counter()
                            await load(client, stream, requests, concurrency)
                            elapsed = time.perf_counter() - start
                            cpu = time.process_time() - cpu
                            rows.append(
                                {
                                    "client": name,
                                    "mode": f"stream ({chunks} chunks)" if stream else "whole",
                                    "concurrency": concurrency,
                                    "requests_per_s": requests / elapsed,
                                    "client_cpu_us_per_request": cpu / requests * 1e6,
                                }
                            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000, help="timed requests per row")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream")
    parser.add_argument("--limit", type=float, default=300, help="give up after these seconds")
    args = parser.parse_args(argv)
    rows = trio.run(measure, args.requests, args.chunks, args.limit)
    print("| client | mode | concurrency | requests/s | client CPU us/request |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['client']} | {r['mode']} | {r['concurrency']} | {r['requests_per_s']:.0f} "
            f"| {r['client_cpu_us_per_request']:.0f} |"
        )


if __name__ == "__main__":
    main()
