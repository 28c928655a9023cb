"""Assertions and readers shared by the tests of every package."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from middlewares import (
    Cache,
    ConcurrencyLimiter,
    ConcurrencyStatistics,
    MemoryStore,
    RateLimiter,
    RateLimitStatistics,
)
from pipeline import Pipeline
from providers import MockProvider


def assert_nothing_held(
    *,
    pipeline: Pipeline | None = None,
    store: MemoryStore | None = None,
    cache: Cache | None = None,
    limiters: Iterable[ConcurrencyLimiter | RateLimiter] = (),
    providers: Iterable[MockProvider] = (),
) -> None:
    """Every reservation was given back: slots, slot waiters, locks, fills, estimates, streams.

    Read through the public `statistics()`. A `pipeline` adds its cache and limiters to
    those given, and their store when it is a `MemoryStore`.
    """
    caches = [cache] if cache is not None else []
    limiters = list(limiters)
    stores = [store] if store is not None else []
    for middleware in pipeline.middlewares if pipeline is not None else ():
        if isinstance(middleware, Cache):
            caches.append(middleware)
        elif isinstance(middleware, ConcurrencyLimiter | RateLimiter):
            limiters.append(middleware)
        else:
            continue
        if isinstance(middleware.store, MemoryStore) and middleware.store not in stores:
            stores.append(middleware.store)
    for each in stores:
        held = each.statistics()
        assert (held.slots, held.slot_waiters, held.locks) == ({}, {}, 0), held
    for each_cache in caches:
        assert each_cache.statistics().flights == 0
    for limiter in limiters:
        if isinstance(limiter, ConcurrencyLimiter):
            assert limiter.statistics() == ConcurrencyStatistics(held=0, waiting=0)
        else:
            assert limiter.statistics() == RateLimitStatistics(unsettled=0)
    for provider in providers:
        assert provider.open_streams == 0, f"{provider.name}: {provider.open_streams} open"


def parse_sse(body: str) -> list[tuple[str | None, str]]:
    """Split a server-sent-events body into `(event name, data)` pairs, in order."""
    events = []
    for block in body.split("\n\n"):
        if not block:
            continue
        name, data = None, []
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        events.append((name, "\n".join(data)))
    return events


def sse_data(body: str) -> list[str]:
    """The data of each event of a server-sent-events body, in order."""
    return [data for _, data in parse_sse(body)]


async def read_events(lines: AsyncIterator[str], count: int) -> list[str]:
    """Read a response's lines until `count` `data:` lines have arrived; returns them.

    Pass the same `response.aiter_lines()` iterator to read on where the last call stopped.
    """
    events = []
    async for line in lines:
        if line.startswith("data: "):
            events.append(line)
            if len(events) == count:
                break
    return events
