"""The built-in load generator's loops: when requests are sent and how latency is counted."""

from __future__ import annotations

import pytest
import trio

from benchmarks._bench._client import ProtocolError
from benchmarks._bench._load import closed_loop, measure, open_loop, send_times


def test_send_times_are_evenly_spaced_from_the_start() -> None:
    assert send_times(10.0, 4.0, 5) == [10.0, 10.25, 10.5, 10.75, 11.0]
    with pytest.raises(ValueError, match="must be positive"):
        send_times(0.0, 0.0, 1)


async def test_an_open_loop_sends_on_schedule_whatever_the_server_does(
    autojump_clock: trio.abc.Clock,
) -> None:
    sent: list[float] = []

    async def slow(i: int) -> float | None:
        sent.append(trio.current_time())
        await trio.sleep(1.0)  # ten times the interval: answers overlap
        return None

    start = trio.current_time()
    times = send_times(start + 1, 10.0, 20)
    records = await open_loop(times, slow, cutoff=times[-1] + 5)

    assert sent == pytest.approx(times)
    result = measure(records, cutoff=trio.current_time(), span=2.0)
    assert (result.requests, result.errors, result.incomplete) == (20, 0, 0)
    assert result.latency is not None
    assert result.latency.p50 == pytest.approx(1000.0)
    assert result.latency.max == pytest.approx(1000.0)
    # Twenty requests over their two-second span, not over the 2.9 s until the last answer.
    assert result.seconds == pytest.approx(2.9)
    assert result.max_lag_ms == pytest.approx(0.0, abs=1e-6)


async def test_waiting_for_a_busy_server_counts_as_latency(autojump_clock: trio.abc.Clock) -> None:
    # One connection, answers taking 0.3 s, a request every 0.1 s: each waits longer than
    # the one before. Measured from the actual send, every request would take 0.3 s.
    connection = trio.Lock()

    async def serial(i: int) -> float | None:
        async with connection:
            await trio.sleep(0.3)
            return trio.current_time() - 0.1

    start = trio.current_time()
    times = send_times(start, 10.0, 5)
    records = await open_loop(times, serial, cutoff=start + 10)

    latencies = [record.end - record.scheduled for record in records if record.end is not None]
    assert latencies == pytest.approx([0.3, 0.5, 0.7, 0.9, 1.1])
    result = measure(records, cutoff=trio.current_time())
    assert result.latency is not None
    assert result.latency.max == pytest.approx(1100.0)
    assert result.ttft is not None
    assert result.ttft.p50 == pytest.approx(600.0)


async def test_what_runs_past_the_cutoff_is_incomplete_and_counts_to_the_cutoff(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def hangs_after_two(i: int) -> float | None:
        if i >= 2:
            await trio.sleep_forever()
        return None

    start = trio.current_time()
    times = send_times(start, 1.0, 4)  # sent at 0, 1, 2, 3
    records = await open_loop(times, hangs_after_two, cutoff=start + 5)

    assert trio.current_time() == pytest.approx(start + 5)
    result = measure(records, cutoff=trio.current_time())
    assert (result.requests, result.errors, result.incomplete) == (2, 0, 2)
    assert result.latency is not None
    # The two hung requests count 3 s and 2 s: lower bounds, not dropped.
    assert result.latency.max == pytest.approx(3000.0)
    assert result.latency.count == 4


async def test_requests_not_yet_due_at_the_cutoff_are_not_counted(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def instant(i: int) -> float | None:
        return None

    start = trio.current_time()
    times = send_times(start, 1.0, 10)
    records = await open_loop(times, instant, cutoff=start + 4.5)

    result = measure(records, cutoff=trio.current_time())
    assert (result.requests, result.incomplete) == (5, 0)


async def test_failures_are_errors_not_latencies(autojump_clock: trio.abc.Clock) -> None:
    async def flaky(i: int) -> float | None:
        await trio.sleep(0.01)
        if i % 2:
            raise ProtocolError("status 500")
        return None

    start = trio.current_time()
    records = await open_loop(send_times(start, 100.0, 10), flaky, cutoff=start + 1)

    result = measure(records, cutoff=trio.current_time())
    assert (result.requests, result.errors) == (5, 5)
    assert result.latency is not None
    assert result.latency.count == 5


async def test_a_closed_loop_keeps_concurrency_requests_in_flight(
    autojump_clock: trio.abc.Clock,
) -> None:
    in_flight = peak = 0

    async def tracked(i: int) -> float | None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await trio.sleep(0.125)  # exact in binary: eight answers make exactly a second
        in_flight -= 1
        return None

    start = trio.current_time()
    records = await closed_loop(tracked, concurrency=4, duration=1.0, max_requests=10_000)

    assert peak == 4
    # Four clients, eight answers each in a second.
    assert len(records) == 32
    assert trio.current_time() == pytest.approx(start + 1.0)
    result = measure(records, cutoff=trio.current_time())
    assert result.rate == pytest.approx(32.0)
    assert result.latency is not None
    assert result.latency.p99 == pytest.approx(125.0)


async def test_a_closed_loop_stops_at_its_request_budget(autojump_clock: trio.abc.Clock) -> None:
    async def quick(i: int) -> float | None:
        await trio.sleep(0.001)
        return None

    records = await closed_loop(quick, concurrency=3, duration=60.0, max_requests=25)

    assert len(records) == 25


async def test_a_closed_loop_abandons_a_request_that_hangs(autojump_clock: trio.abc.Clock) -> None:
    async def hangs(i: int) -> float | None:
        await trio.sleep_forever()
        return None

    start = trio.current_time()
    records = await closed_loop(hangs, concurrency=2, duration=1.0, max_requests=100)

    assert trio.current_time() == pytest.approx(start + 2.0)
    assert measure(records, cutoff=trio.current_time()).incomplete == 2
