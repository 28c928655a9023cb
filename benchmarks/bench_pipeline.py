"""In-process cost of the pipeline over calling the provider directly.

Runs the mock provider with zero delays, alone and behind 0, 1, 4 and 8 middlewares, for
non-streaming requests and for streams of many chunks, and prints microseconds per request
and the added cost per chunk (medians of repeated runs).

    python -m benchmarks.bench_pipeline [--requests 2000] [--repeats 7] [--chunks 100]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from pipeline import Context, Handler, Message, Middleware, Pipeline, Request, ResponseStream
from providers import MockProvider


async def passthrough(request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
    """A middleware that does nothing but call the next one."""
    return await call_next(request, ctx)


async def observing(request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
    """A middleware that watches every chunk and the end, like a logger or a limiter."""
    stream = await call_next(request, ctx)
    return stream.observe(on_chunk=lambda chunk: None, on_end=lambda end: None)


Run = Callable[[Request], Awaitable[None]]


def direct(provider: MockProvider) -> Run:
    async def run(request: Request) -> None:
        stream = await provider.execute(request, Context())
        async with stream:
            async for _ in stream:
                pass

    return run


def through(pipeline: Pipeline) -> Run:
    async def run(request: Request) -> None:
        stream = await pipeline.handle(request, Context())
        async with stream:
            async for _ in stream:
                pass

    return run


async def time_runs(run: Run, request: Request, requests: int, repeats: int) -> float:
    """Median seconds per request over `repeats` batches of `requests` calls."""
    for _ in range(min(requests, 200)):
        await run(request)
    samples = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        for _ in range(requests):
            await run(request)
        samples.append((time.perf_counter() - start) / requests)
    return statistics.median(samples)


async def measure(requests: int, repeats: int, chunks: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    messages = [Message(role="user", content="benchmark")]
    for stream, n_chunks in ((False, 1), (True, chunks)):
        provider = MockProvider("x" * n_chunks, chunks=n_chunks)
        request = Request(model="mock", messages=messages, stream=stream)
        # Chunks per request: content chunks, a finish chunk and a usage chunk.
        per_request_chunks = n_chunks + 2
        base = await time_runs(direct(provider), request, requests, repeats)
        rows.append(row(stream, "direct (no pipeline)", base, base, per_request_chunks))
        for kind, middleware in (("pass-through", passthrough), ("observing", observing)):
            for count in (0, 1, 4, 8):
                if kind == "observing" and count == 0:
                    continue
                chain: list[Middleware] = [middleware] * count
                run = through(Pipeline(provider, chain))
                seconds = await time_runs(run, request, requests, repeats)
                label = f"{count} {kind}" if count else "0 middlewares"
                rows.append(row(stream, label, seconds, base, per_request_chunks))
    return rows


def row(stream: bool, label: str, seconds: float, base: float, chunks: int) -> dict[str, Any]:
    added = seconds - base
    return {
        "mode": "stream" if stream else "whole",
        "stack": label,
        "chunks": chunks,
        "us_per_request": seconds * 1e6,
        "added_us_per_request": added * 1e6,
        "added_us_per_chunk": added * 1e6 / chunks if stream else None,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| mode | stack | chunks/request | us/request | added us/request | added us/chunk |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        per_chunk = "" if r["added_us_per_chunk"] is None else f"{r['added_us_per_chunk']:.3f}"
        lines.append(
            f"| {r['mode']} | {r['stack']} | {r['chunks']} | {r['us_per_request']:.1f} "
            f"| {r['added_us_per_request']:.1f} | {per_chunk} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests per timed batch")
    parser.add_argument("--repeats", type=int, default=7, help="timed batches (median reported)")
    parser.add_argument("--chunks", type=int, default=100, help="content chunks per stream")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    rows = trio.run(measure, args.requests, args.repeats, args.chunks)
    print(json.dumps(rows, indent=2) if args.json else markdown(rows))


if __name__ == "__main__":
    main()
