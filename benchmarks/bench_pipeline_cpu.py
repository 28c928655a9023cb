"""CPU time per request through the pipeline, robust to a machine shared with other work.

`bench_pipeline` reports wall time, which other processes on a small shared machine move by
tens of percent; this one reads the process's CPU time (`time.process_time`) and keeps the
best of seven runs of each row, so two trees can be compared on a busy machine:

    python -m benchmarks.bench_pipeline_cpu
    PYTHONPATH=/path/to/other/checkout python -m benchmarks.bench_pipeline_cpu

Rows: a whole answer and a 100-chunk stream from the mock provider, behind no middleware,
8 pass-through middlewares and 8 observing ones (each watching the stream's end).
"""

from __future__ import annotations

import time

import trio

from pipeline import Context, Handler, Message, Middleware, Pipeline, Request, ResponseStream
from providers import MockProvider

REPEATS = 7


async def passthrough(request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
    """A middleware that does nothing but call the next one."""
    return await call_next(request, ctx)


async def observing(request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
    """A middleware that watches how the stream ends."""
    return (await call_next(request, ctx)).observe(on_end=lambda end: None)


async def cpu_per_request(pipeline: Pipeline, request: Request, count: int) -> float:
    """Microseconds of CPU per request, over `count` requests read to their end."""
    start = time.process_time()
    for _ in range(count):
        async with await pipeline.handle(request, Context()) as stream:
            async for _ in stream:
                pass
    return (time.process_time() - start) / count * 1e6


async def main() -> None:
    messages = [Message(role="user", content="hi")]
    whole = Request(model="m", messages=messages, stream=False)
    streamed = Request(model="m", messages=messages, stream=True)
    chains: list[tuple[str, list[Middleware]]] = [
        ("no middleware", []),
        ("8 pass-through", [passthrough] * 8),
        ("8 observing", [observing] * 8),
    ]
    print("| answer | chain | CPU us per request (best of 7) |")
    print("|---|---|---:|")
    for label, request, chunks, count in (
        ("whole", whole, 1, 2000),
        ("100-chunk stream", streamed, 100, 200),
    ):
        for name, chain in chains:
            pipeline = Pipeline(MockProvider("x " * 100, chunks=chunks), chain)
            await cpu_per_request(pipeline, request, 50)  # warm up
            best = min([await cpu_per_request(pipeline, request, count) for _ in range(REPEATS)])
            print(f"| {label} | {name} | {best:.1f} |")


if __name__ == "__main__":
    trio.run(main)
