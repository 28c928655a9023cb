"""The soak script: a short bounded run against a real `llm-proxy serve`, and its checks."""

from __future__ import annotations

from functools import partial

import trio

from benchmarks.soak import KINDS, MIX, Tally, drive, soak


async def test_a_short_soak_sends_every_kind_and_finds_nothing_unexpected() -> None:
    report = await soak(
        requests=80,
        seconds=30,
        concurrency=4,
        warmup=20,
        distinct=8,
        mix=MIX,
        command="python -m benchmarks.soak --requests 80",
    )
    assert dict(report.tally.sent) == {
        "whole": 20,
        "stream": 20,
        "malformed": 20,
        "oversized": 10,
        "disconnect": 10,
    }
    assert dict(report.tally.errors) == {}
    assert (report.logged_errors, report.tracebacks) == (0, 0)
    assert report.rss_warm is not None
    assert 0 < report.rss_start <= report.peak
    assert 0 < report.rss_end <= report.peak
    text = "\n".join(report.lines())
    assert "Command: `python -m benchmarks.soak --requests 80`" in text
    assert "| disconnect | 10 | 0 |" in text


async def test_answers_that_are_not_the_expected_ones_are_counted_per_kind(
    nursery: trio.Nursery,
) -> None:
    async def always_500(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            await stream.send_all(
                b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n"
            )

    [listener] = await nursery.start(partial(trio.serve_tcp, always_500, 0, host="127.0.0.1"))
    port = listener.socket.getsockname()[1]
    tally = Tally()
    done: list[int] = []
    await drive(
        port,
        requests=16,
        seconds=30,
        concurrency=2,
        distinct=4,
        mix=MIX,
        tally=tally,
        on_done=done.append,
    )
    assert tally.errors == tally.sent
    assert set(tally.sent) == set(KINDS)
    assert tally.examples["whole"].startswith("HTTP/1.1 500")
    assert done == list(range(1, 17))
