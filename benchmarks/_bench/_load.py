"""The built-in load generator: closed loops for throughput, open loops for honest latency.

A *closed loop* keeps `concurrency` requests in flight: each client sends its next request
when the previous answer is complete, so the offered load follows the server's speed and
the throughput is the server's maximum.

An *open loop* sends at a fixed rate whatever the server does. Send times are scheduled
before the run starts, and each latency is measured from the request's *scheduled* time:
a request that left late because the generator or a busy connection held it back still
counts its wait. Measuring from the actual send instead hides exactly the slow moments a
user would see ("coordinated omission").

Both loops are bounded in time and in count; what was still running at the end counts as
incomplete, and its latency up to the cut-off is kept (a lower bound, not dropped, which
would flatter the percentiles).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import msgspec
import trio

from ._client import ConnectionPool, ProtocolError, RequestMaker
from ._stats import Summary, summarize

__all__ = [
    "Exchange",
    "Measured",
    "Record",
    "closed_loop",
    "http_exchange",
    "measure",
    "open_loop",
    "send_times",
]

Exchange = Callable[[int], Awaitable[float | None]]
"""Run the i-th request to its end; returns when its first body byte came (None: no body).

Raising means the request failed."""


class Record:
    """The timeline of one request (all `trio.current_time()` values)."""

    __slots__ = ("end", "first_byte", "ok", "scheduled", "sent")

    def __init__(self, scheduled: float) -> None:
        self.scheduled = scheduled
        self.sent: float | None = None
        self.first_byte: float | None = None
        self.end: float | None = None
        self.ok = False


class Measured(msgspec.Struct, frozen=True):
    """What one load step measured.

    Attributes:
      generator: `builtin` or `wrk`.
      requests: requests that completed with a 200.
      errors: requests that failed (a non-200 status, a broken connection).
      incomplete: requests still running at the cut-off.
      seconds: the step's duration (first scheduled send to the last answer or cut-off).
      latency: from the scheduled send (open loop) or the send (closed loop) to the end of
        the answer, in ms; incomplete requests count up to the cut-off.
      ttft: to the first body byte (for streams, the first event), in ms; None from wrk.
      max_lag_ms: how late the generator sent its latest request; a large value means the
        generator, not the server, could not keep up.
    """

    generator: str
    requests: int
    errors: int
    incomplete: int
    seconds: float
    latency: Summary | None
    ttft: Summary | None
    max_lag_ms: float

    @property
    def rate(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def send_times(start: float, rate: float, count: int) -> list[float]:
    """The send times of an open-loop run: `count` requests `1/rate` seconds apart."""
    if rate <= 0:
        raise ValueError(f"rate {rate} must be positive")
    return [start + i / rate for i in range(count)]


async def _run_one(exchange: Exchange, i: int, record: Record) -> None:
    record.sent = trio.current_time()
    try:
        record.first_byte = await exchange(i)
    except (ProtocolError, OSError):
        record.end = trio.current_time()
        return
    record.end = trio.current_time()
    record.ok = True


async def open_loop(times: Sequence[float], exchange: Exchange, *, cutoff: float) -> list[Record]:
    """Start request i at `times[i]`, whether or not earlier ones have finished.

    Args:
      times: the scheduled send times (`send_times`), ascending.
      exchange: runs one request; see `Exchange`.
      cutoff: the time at which whatever is still running or unsent is abandoned.

    Returns:
      One record per scheduled request; unsent ones have `sent` None.
    """
    records = [Record(t) for t in times]
    with trio.move_on_at(cutoff):
        async with trio.open_nursery() as nursery:
            for i, record in enumerate(records):
                await trio.sleep_until(record.scheduled)
                nursery.start_soon(_run_one, exchange, i, record)
    return records


async def closed_loop(
    exchange: Exchange, *, concurrency: int, duration: float, max_requests: int
) -> list[Record]:
    """Keep `concurrency` requests in flight for `duration` seconds or `max_requests` requests.

    Each request's record is scheduled when it is sent. Requests still running
    `duration` seconds after the last one started are abandoned.
    """
    records: list[Record] = []
    start = trio.current_time()
    deadline = start + duration

    async def client() -> None:
        while trio.current_time() < deadline and len(records) < max_requests:
            record = Record(trio.current_time())
            records.append(record)
            await _run_one(exchange, len(records) - 1, record)

    with trio.move_on_at(deadline + duration):
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(client)
    return records


def measure(records: Sequence[Record], *, cutoff: float, span: float = 0.0) -> Measured:
    """Summarise a built-in run's records.

    Args:
      records: what `open_loop` or `closed_loop` returned.
      cutoff: when the run was cut off (the time it returned): incomplete requests count
        up to it.
      span: the seconds an open loop was planned to last (requests / rate): its rate is
        counted over that span at least, not from the first send to the last answer only.
    """
    latencies: list[float] = []
    ttfts: list[float] = []
    ok = errors = incomplete = 0
    lag = 0.0
    end = records[0].scheduled if records else 0.0
    for record in records:
        if record.sent is not None:
            lag = max(lag, record.sent - record.scheduled)
        if record.end is None:
            if record.scheduled < cutoff:  # a request not yet due was never part of the run
                incomplete += 1
                latencies.append(cutoff - record.scheduled)
                end = cutoff
            continue
        end = max(end, record.end)
        if not record.ok:
            errors += 1
            continue
        ok += 1
        latencies.append(record.end - record.scheduled)
        if record.first_byte is not None:
            ttfts.append(record.first_byte - record.scheduled)
    seconds = max(span, end - records[0].scheduled) if records else 0.0
    return Measured(
        generator="builtin",
        requests=ok,
        errors=errors,
        incomplete=incomplete,
        seconds=seconds,
        latency=summarize(latencies),
        ttft=summarize(ttfts),
        max_lag_ms=lag * 1e3,
    )


def http_exchange(pool: ConnectionPool, make: RequestMaker) -> Exchange:
    """An `Exchange` that sends the i-th request of `make` over `pool`; non-200 fails it."""

    async def exchange(i: int) -> float | None:
        answer = await pool.exchange(make(i))
        if answer.status != 200:
            raise ProtocolError(f"status {answer.status}")
        return answer.first_byte

    return exchange
