"""In-process cost of each middleware, and of the recommended stack on a cache miss and hit.

Each middleware runs alone in front of the mock provider (zero delays), configured as a
real deployment would configure it (a key, limits that are never reached, a cache, the
default timeouts); the recommended stack runs all of them in the documented order. The
baseline is the same pipeline with no middleware, measured in the same run.

    python -m benchmarks.bench_middlewares [--requests 2000] [--repeats 5] [--chunks 100]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import structlog
import trio

from benchmarks.bench_pipeline import markdown, row
from llm_proxy import parse_config, recommended_middlewares
from middlewares import (
    AccessLog,
    ApiKey,
    Auth,
    Cache,
    ConcurrencyLimiter,
    Fallback,
    MemoryStore,
    Metrics,
    MetricsMiddleware,
    RateLimiter,
    Retry,
    Timeout,
    configure_logging,
)
from pipeline import Context, Message, Middleware, Pipeline, Request, Route, Router
from providers import MockProvider

KEY = "sk-bench-0123456789abcdef"
HEADERS = {"authorization": f"Bearer {KEY}"}
STACK_CONFIG = """
[[providers]]
name = "mock"
kind = "mock"

[[models]]
name = "bench"
provider = "mock"
fallbacks = ["spare"]

[[models]]
name = "spare"
provider = "mock"

[[keys]]
id = "bench"
key_env = "LLM_PROXY_BENCH_KEY"
requests_per_minute = 1000000000
tokens_per_minute = 1000000000
max_concurrency = 1000

[cache]
enabled = true
"""

Chain = Callable[[], list[Middleware]]


def alone() -> dict[str, Chain]:
    """Each middleware on its own, configured as a deployment would."""
    store = MemoryStore()
    return {
        "access log": lambda: [AccessLog()],
        "metrics": lambda: [MetricsMiddleware(Metrics())],
        "auth": lambda: [Auth({KEY: ApiKey("bench")})],
        "rate limit (rpm+tpm, key+global)": lambda: [
            RateLimiter(
                store,
                requests_per_minute=10**9,
                tokens_per_minute=10**9,
                global_requests_per_minute=10**9,
                global_tokens_per_minute=10**9,
            )
        ],
        "concurrency (key+global)": lambda: [
            ConcurrencyLimiter(store, max_concurrency=1000, per_key=1000)
        ],
        "cache (miss)": lambda: [Cache(MemoryStore())],
        "retry": lambda: [Retry()],
        "fallback": lambda: [Fallback({"bench": ["spare"]})],
        "timeout (total+ttft+idle)": lambda: [Timeout(total=600, first_token=120, idle=120)],
    }


async def time_batches(
    pipeline: Pipeline, requests: list[Request], count: int, repeats: int
) -> float:
    """Median seconds per request over `repeats` batches of `count` requests."""

    async def one(request: Request) -> None:
        stream = await pipeline.handle(request, Context(headers=HEADERS))
        async with stream:
            async for _ in stream:
                pass

    cycle = itertools.cycle(requests)
    for _ in range(min(count, 200)):
        await one(next(cycle))
    samples = []
    for _ in range(repeats):
        gc.collect()
        start = time.process_time()
        for _ in range(count):
            await one(next(cycle))
        samples.append((time.process_time() - start) / count)
    return statistics.median(samples)


def distinct_requests(stream: bool, count: int) -> list[Request]:
    """Requests that differ in their text, so that a cache never sees one twice in a run."""
    return [
        Request(model="bench", messages=[Message(role="user", content=f"q{i}")], stream=stream)
        for i in range(count)
    ]


async def measure(count: int, repeats: int, chunks: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    config = parse_config(STACK_CONFIG)
    for stream, n_chunks in ((False, 1), (True, chunks)):
        provider = MockProvider("x" * n_chunks, chunks=n_chunks)
        router = Router({"bench": Route(provider, "bench"), "spare": Route(provider, "spare")})
        per_request = n_chunks + 2
        # Enough distinct requests that no cache entry repeats within a run.
        misses = distinct_requests(stream, count * (repeats + 1) + 200)
        same = misses[:1]
        base = await time_batches(Pipeline(router), same, count, repeats)
        rows.append(row(stream, "no middleware", base, base, per_request))
        for name, chain in alone().items():
            requests = misses if name.startswith("cache") else same
            seconds = await time_batches(Pipeline(router, chain()), requests, count, repeats)
            rows.append(row(stream, name, seconds, base, per_request))
        stack = Pipeline(router, recommended_middlewares(config, store=MemoryStore()))
        seconds = await time_batches(stack, misses, count, repeats)
        rows.append(row(stream, "recommended stack, cache miss", seconds, base, per_request))
        seconds = await time_batches(stack, same, count, repeats)
        rows.append(row(stream, "recommended stack, cache hit", seconds, base, per_request))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests per timed batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches (median reported)")
    parser.add_argument("--chunks", type=int, default=100, help="content chunks per stream")
    args = parser.parse_args(argv)
    os.environ.setdefault("LLM_PROXY_BENCH_KEY", KEY)
    # The access log writes real JSON lines, to a sink that costs nothing to write to.
    with open(os.devnull, "w") as sink:
        configure_logging("json", "info", secrets=[KEY], file=sink)
        rows = trio.run(measure, args.requests, args.repeats, args.chunks)
    structlog.reset_defaults()
    print(markdown(rows))


if __name__ == "__main__":
    main()
