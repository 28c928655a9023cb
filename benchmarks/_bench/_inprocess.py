"""The pipeline's own cost, in process: what the framework adds before any socket is involved.

Over the mock provider with zero delays: the provider alone, a pipeline with no
middleware, and the recommended stack (the one `bench_middlewares` measures: a key, rate
and concurrency limits that are never reached, a cache, retry, fallback, timeouts) on a
cache miss and on a cache hit; for whole answers and for streams. The timing loops are
`bench_pipeline`'s and `bench_middlewares`'.
"""

from __future__ import annotations

import os

import msgspec
import structlog
import trio

from benchmarks.bench_middlewares import (
    KEY,
    STACK_CONFIG,
    distinct_requests,
    time_batches,
)
from benchmarks.bench_pipeline import direct, time_runs
from llm_proxy import parse_config, recommended_middlewares
from middlewares import MemoryStore, configure_logging
from pipeline import Pipeline, Route, Router
from providers import MockProvider

__all__ = ["InProcessRow", "measure_in_process"]

_KEY_ENV = "LLM_PROXY_BENCH_KEY"


class InProcessRow(msgspec.Struct, frozen=True):
    """One stack's cost per request, and per chunk over the provider alone.

    Attributes:
      stack: what ran.
      mode: `whole` or `stream`.
      chunks: chunks per request (content chunks, a finish and a usage chunk).
      us_per_request: microseconds per request, the provider's included.
      added_us_per_request: over the provider called alone.
      added_us_per_chunk: the same, per chunk (streams only).
    """

    stack: str
    mode: str
    chunks: int
    us_per_request: float
    added_us_per_request: float
    added_us_per_chunk: float | None


async def _measure(requests: int, repeats: int, chunks: int) -> list[InProcessRow]:
    rows: list[InProcessRow] = []
    config = parse_config(STACK_CONFIG)
    for stream, n_chunks in ((False, 1), (True, chunks)):
        mode = "stream" if stream else "whole"
        per_request = n_chunks + 2
        provider = MockProvider("x" * n_chunks, chunks=n_chunks)
        router = Router({"bench": Route(provider, "bench"), "spare": Route(provider, "spare")})
        misses = distinct_requests(stream, requests * (repeats + 1) + 200)
        same = misses[:1]
        base = await time_runs(direct(provider), same[0], requests, repeats)
        stack = Pipeline(router, recommended_middlewares(config, store=MemoryStore()))
        timings = [
            ("provider alone", base),
            (
                "pipeline, no middleware",
                await time_batches(Pipeline(router), same, requests, repeats),
            ),
            ("recommended stack, cache miss", await time_batches(stack, misses, requests, repeats)),
            ("recommended stack, cache hit", await time_batches(stack, same, requests, repeats)),
        ]
        for name, seconds in timings:
            added = (seconds - base) * 1e6
            rows.append(
                InProcessRow(
                    stack=name,
                    mode=mode,
                    chunks=per_request,
                    us_per_request=seconds * 1e6,
                    added_us_per_request=added,
                    added_us_per_chunk=added / per_request if stream else None,
                )
            )
    return rows


def measure_in_process(requests: int, repeats: int, chunks: int) -> list[InProcessRow]:
    """Time each stack; `requests` per timed batch, the median of `repeats` batches.

    The access log writes its real JSON lines to /dev/null; logging is reset afterwards.
    """
    previous = os.environ.get(_KEY_ENV)
    os.environ[_KEY_ENV] = KEY
    try:
        with open(os.devnull, "w") as sink:
            configure_logging("json", "info", secrets=[KEY], file=sink)
            return trio.run(_measure, requests, repeats, chunks)
    finally:
        structlog.reset_defaults()
        if previous is None:
            del os.environ[_KEY_ENV]
        else:
            os.environ[_KEY_ENV] = previous
