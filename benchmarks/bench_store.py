"""What the Redis store costs next to the memory store, per operation and per request.

Starts its own `redis-server` on a free loopback port (or uses `--redis-url`), then, in
one run, for each store:

- per operation: the median latency of each store call the middlewares make, one at a
  time, and how many reservations per second 32 concurrent tasks get through (coredis
  sends concurrent commands down shared connections), with a PING through coredis and
  on a bare trio socket for scale;
- per request: the rate limiter (requests and tokens, per key and global), the
  concurrency limiter (per key and global) and the cache in front of the mock provider
  (zero delays), one request at a time, on a cache miss (every request different) and a
  cache hit. "cpu us" is this process's CPU time per request (Redis's own is not in it);
- the same with 32 requests at once: this process's CPU time per request (the Redis
  store sends the calls of concurrent requests, and each request's admission calls,
  together).

    python -m benchmarks.bench_store [--requests 1000] [--repeats 3] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from urllib.parse import urlsplit

import structlog
import trio

from benchmarks.redis_server import RedisServer
from middlewares import (
    ApiKey,
    Bucket,
    Cache,
    ConcurrencyLimiter,
    MemoryStore,
    RateLimiter,
    RedisStore,
    Store,
)
from pipeline import Context, Message, Middleware, Pipeline, Request
from providers import MockProvider

ENTRY = b"x" * 4096
"""About what a short cached answer weighs as msgpack chunks."""
BUCKETS = [Bucket("rl:req:key:bench", 10**9, 60.0, 1), Bucket("rl:req:global", 10**9, 60.0, 1)]
SLOTS = {"cc:key:bench": 10**6, "cc:global": 10**6}


def operations(store: Store) -> dict[str, Callable[[], Awaitable[object]]]:
    """One call of each kind, as the middlewares make them (two buckets, two slot keys)."""

    async def slot() -> None:
        taken = await store.acquire_slots(SLOTS, 600)
        assert taken is not None
        await store.release_slots(list(SLOTS), taken)

    async def lock() -> None:
        token = await store.try_lock("lock:bench", 60)
        assert token is not None
        await store.unlock("lock:bench", token)

    return {
        "reserve (2 buckets)": lambda: store.reserve(BUCKETS),
        "settle (2 buckets)": lambda: store.settle(BUCKETS),
        "acquire + release slot (2 keys)": slot,
        "cache get (4 KB hit)": lambda: store.cache_get("cache:bench"),
        "cache set (4 KB)": lambda: store.cache_set("cache:bench", ENTRY, 300),
        "lock + unlock": lock,
    }


async def median_seconds(
    call: Callable[[], Awaitable[object]], count: int, repeats: int
) -> tuple[float, float]:
    """Median (wall, CPU) seconds per call, calls one at a time."""
    for _ in range(min(count, 100)):
        await call()
    walls, cpus = [], []
    for _ in range(repeats):
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            await call()
        walls.append((time.perf_counter() - wall) / count)
        cpus.append((time.process_time() - cpu) / count)
    return statistics.median(walls), statistics.median(cpus)


async def concurrent_rate(store: Store, tasks: int, per_task: int) -> tuple[float, float]:
    """Reservations per second with `tasks` tasks reserving at once, and CPU s per call."""

    async def worker() -> None:
        for _ in range(per_task):
            await store.reserve(BUCKETS)

    start, cpu = time.perf_counter(), time.process_time()
    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(worker)
    calls = tasks * per_task
    return calls / (time.perf_counter() - start), (time.process_time() - cpu) / calls


async def bare_ping(stack: AsyncExitStack, url: str) -> Callable[[], Awaitable[None]]:
    """A PING round trip on a plain trio socket: what any client must pay at least."""
    parts = urlsplit(url)
    stream = await trio.open_tcp_stream(parts.hostname or "127.0.0.1", parts.port or 6379)
    await stack.enter_async_context(stream)

    async def ping() -> None:
        await stream.send_all(b"PING\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            reply += await stream.receive_some()

    return ping


def stateful(store: Store) -> list[Middleware]:
    return [
        RateLimiter(
            store,
            requests_per_minute=10**9,
            tokens_per_minute=10**9,
            global_requests_per_minute=10**9,
            global_tokens_per_minute=10**9,
        ),
        ConcurrencyLimiter(store, max_concurrency=10**6, per_key=10**6),
        Cache(store),
    ]


async def per_request(
    pipeline: Pipeline, requests: list[Request], count: int, repeats: int
) -> tuple[float, float]:
    """Median (wall, CPU) seconds per request, requests taken in turn."""
    key = ApiKey("bench")
    cycle = itertools.cycle(requests)

    async def one() -> None:
        ctx = Context()
        ctx.key_id, ctx.key = key.id, key
        stream = await pipeline.handle(next(cycle), ctx)
        async with stream:
            async for _ in stream:
                pass

    for _ in range(min(count, 100)):
        await one()
    walls, cpus = [], []
    for _ in range(repeats):
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            await one()
        walls.append((time.perf_counter() - wall) / count)
        cpus.append((time.process_time() - cpu) / count)
    return statistics.median(walls), statistics.median(cpus)


async def concurrent_requests(
    pipeline: Pipeline, requests: Callable[[int, int], list[Request]], tasks: int, repeats: int
) -> float:
    """Least CPU seconds per request with `tasks` tasks at once (`requests(repeat, task)`)."""
    key = ApiKey("bench")

    async def worker(batch: list[Request]) -> None:
        for request in batch:
            ctx = Context()
            ctx.key_id, ctx.key = key.id, key
            stream = await pipeline.handle(request, ctx)
            async with stream:
                async for _ in stream:
                    pass

    best = float("inf")
    for repeat in range(repeats + 1):  # the first one warms up
        batches = [requests(repeat, task) for task in range(tasks)]
        gc.collect()
        cpu = time.process_time()
        async with trio.open_nursery() as nursery:
            for batch in batches:
                nursery.start_soon(worker, batch)
        if repeat:
            best = min(best, (time.process_time() - cpu) / sum(map(len, batches)))
    return best


async def measure(url: str, count: int, repeats: int) -> str:
    async with AsyncExitStack() as stack:
        stores: dict[str, Store] = {
            "memory": MemoryStore(),
            "redis": await stack.enter_async_context(RedisStore(url, prefix="bench:")),
        }
        lines = [
            "Per operation, one at a time (median us per call; redis: wall and this",
            "process's CPU, Redis's own CPU not counted):",
            "",
            "| operation | memory | redis wall | redis cpu |",
            "|---|---:|---:|---:|",
        ]
        ops = {name: operations(store) for name, store in stores.items()}
        for name in ops["memory"]:
            memory, _ = await median_seconds(ops["memory"][name], count, repeats)
            wall, cpu = await median_seconds(ops["redis"][name], count, repeats)
            lines.append(f"| {name} | {memory * 1e6:.1f} | {wall * 1e6:.1f} | {cpu * 1e6:.1f} |")
        redis = stores["redis"]
        assert isinstance(redis, RedisStore)
        ping, ping_cpu = await median_seconds(redis.ping, count, repeats)
        floor, floor_cpu = await median_seconds(await bare_ping(stack, url), count, repeats)
        lines.append(f"| PING, through the store | - | {ping * 1e6:.1f} | {ping_cpu * 1e6:.1f} |")
        lines.append(
            f"| PING, bare trio socket (the floor) | - | {floor * 1e6:.1f} "
            f"| {floor_cpu * 1e6:.1f} |"
        )
        (memory_rate, _), (rate, rate_cpu) = [
            await concurrent_rate(store, 32, count // 32 + 1) for store in stores.values()
        ]
        lines.append(
            f"| reserve, 32 tasks at once: calls/s (redis cpu us per call) | {memory_rate:,.0f} "
            f"| {rate:,.0f} | {rate_cpu * 1e6:.1f} |"
        )

        lines += [
            "",
            "Per request: rate limit + concurrency + cache over the mock provider, one at a time:",
            "",
            "| store | case | wall us/request | added wall us | cpu us/request | added cpu us |",
            "|---|---|---:|---:|---:|---:|",
        ]
        provider = MockProvider("x" * 8, chunks=8)
        same = [Request(model="bench", messages=[Message(role="user", content="q")])]
        misses = [
            Request(model="bench", messages=[Message(role="user", content=f"q{i}")])
            for i in range(count * (repeats + 1) + 100)
        ]
        base_wall, base_cpu = await per_request(Pipeline(provider), same, count, repeats)
        lines.append(
            f"| - | no middleware | {base_wall * 1e6:.1f} | 0.0 | {base_cpu * 1e6:.1f} | 0.0 |"
        )
        for name, store in stores.items():
            pipeline = Pipeline(provider, stateful(store))
            for case, requests in (("cache miss", misses), ("cache hit", same)):
                wall, cpu = await per_request(pipeline, requests, count, repeats)
                lines.append(
                    f"| {name} | {case} | {wall * 1e6:.1f} | {(wall - base_wall) * 1e6:.1f} "
                    f"| {cpu * 1e6:.1f} | {(cpu - base_cpu) * 1e6:.1f} |"
                )
        lines += [
            "",
            "Per request, 32 at once (least CPU us per request over the repeats):",
            "",
            "| store | cache miss | cache hit |",
            "|---|---:|---:|",
        ]
        per_task = max(1, count // 32)

        def fresh(repeat: int, task: int) -> list[Request]:
            return [
                Request(
                    model="bench",
                    messages=[Message(role="user", content=f"c{repeat}-{task}-{i}")],
                )
                for i in range(per_task)
            ]

        for name, store in stores.items():
            pipeline = Pipeline(provider, stateful(store))
            miss = await concurrent_requests(pipeline, fresh, 32, repeats)
            hit = await concurrent_requests(pipeline, lambda r, t: same * per_task, 32, repeats)
            lines.append(f"| {name} | {miss * 1e6:.1f} | {hit * 1e6:.1f} |")
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000, help="calls per timed batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed batches (median reported)")
    parser.add_argument("--redis-url", help="an existing Redis (default: start redis-server)")
    args = parser.parse_args(argv)
    # As a served proxy logs: info and up (the cache's debug lines would be most of the cost).
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    if args.redis_url:
        print(trio.run(measure, args.redis_url, args.requests, args.repeats))
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(binary, Path(directory))
        server.start()
        try:
            print(trio.run(measure, server.url, args.requests, args.repeats))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
