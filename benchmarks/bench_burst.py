"""A burst: N clients connect at once and each streams one answer, direct and through the proxy.

The fake upstream paces every stream (a time to first token, then a delay between chunks),
so a proxy that keeps up adds almost nothing: the burst takes as long through it as
straight to the upstream, and its time to first token is the upstream's. A proxy that
cannot accept a burst at once, or serialises streams, stretches both.

    python -m benchmarks.bench_burst [--clients 1000] [--chunks 40] [--ttft 0.2] [--delay 0.05]

The fake upstream and `llm-proxy serve` (minimal stack, a pool as large as the burst) run
in their own processes; this process is the load generator. Every loop is bounded in count
and time, and everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import msgspec
import trio

from ._bench._client import Answer, Connection, chat_requests
from ._bench._procs import running

READY_UPSTREAM = r"fake upstream ready on (http://\S+)"
READY_PROXY = r"llm-proxy is serving \S+ at (http://\S+)/v1"
LIMIT = 180.0
"""Seconds the whole benchmark may take."""

CONFIG = """
[server]
max_connections = {connections}

[log]
level = "warning"

[[providers]]
name = "upstream"
kind = "openai"
base_url = "{upstream}/v1"
pool_size = {connections}

[[models]]
name = "bench"
provider = "upstream"

[timeouts]
total = 120
first_token = 60
idle = 60

[retry]
max_attempts = 1
"""


class Burst(msgspec.Struct):
    """What one burst measured (seconds)."""

    target: str
    clients: int
    failed: int
    elapsed: float
    ttft_p50: float
    ttft_p99: float


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def burst(target: str, url: str, clients: int) -> Burst:
    """`clients` connections opened at once, each sending one streamed request."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    make = chat_requests(host, int(port), model="bench", stream=True)
    ttfts: list[float] = []
    failed = 0
    start = trio.current_time()

    async def one(i: int) -> None:
        nonlocal failed
        sent = trio.current_time()
        try:
            connection = await Connection.open(host, int(port))
            answer: Answer = await connection.exchange(make(i))
            await connection.aclose()
        except (OSError, trio.BrokenResourceError, Exception):
            failed += 1
            return
        if answer.status != 200 or answer.first_byte is None:
            failed += 1
            return
        ttfts.append(answer.first_byte - sent)

    with trio.fail_after(LIMIT / 2):
        async with trio.open_nursery() as nursery:
            for i in range(clients):
                nursery.start_soon(one, i)
    elapsed = trio.current_time() - start
    ttfts = ttfts or [float("nan")]
    return Burst(
        target,
        clients,
        failed,
        elapsed,
        statistics.median(ttfts),
        _percentile(ttfts, 0.99),
    )


async def main(clients: int, chunks: int, ttft: float, delay: float) -> list[Burst]:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        upstream_command = [sys.executable, "-m", "benchmarks.fake_upstream", "--port", "0"]
        upstream_command += ["--chunks", str(chunks), "--ttft", str(ttft)]
        upstream_command += ["--chunk-delay", str(delay)]
        with trio.fail_after(LIMIT):
            async with running(
                "fake upstream", upstream_command, log=out / "upstream.log", ready=READY_UPSTREAM
            ) as upstream:
                config = out / "proxy.toml"
                config.write_text(CONFIG.format(upstream=upstream.url, connections=clients * 2))
                proxy_command = [sys.executable, "-m", "llm_proxy.cli", "serve"]
                proxy_command += ["--config", str(config), "--port", "0"]
                async with running(
                    "llm-proxy",
                    proxy_command,
                    log=out / "proxy.log",
                    ready=READY_PROXY,
                    env={"OPENAI_API_KEY": "unused"},
                ) as proxy:
                    direct = await burst("direct to the fake upstream", upstream.url, clients)
                    proxied = await burst("through llm-proxy (minimal stack)", proxy.url, clients)
    return [direct, proxied]


def report(results: list[Burst]) -> str:
    direct, proxied = results
    lines = [
        "| target | clients | failed | burst s | TTFT p50 s | TTFT p99 s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.target} | {r.clients} | {r.failed} | {r.elapsed:.2f} | {r.ttft_p50:.3f} "
            f"| {r.ttft_p99:.3f} |"
        )
    lines.append("")
    lines.append(
        f"through the proxy / direct: burst {proxied.elapsed / direct.elapsed:.2f}x, "
        f"TTFT p99 {proxied.ttft_p99 / direct.ttft_p99:.2f}x"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--chunks", type=int, default=40)
    parser.add_argument("--ttft", type=float, default=0.2)
    parser.add_argument("--delay", type=float, default=0.05)
    args = parser.parse_args()
    print(report(trio.run(main, args.clients, args.chunks, args.ttft, args.delay)))
