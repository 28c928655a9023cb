"""wrk: the script the harness gives it, and reading what it prints."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from benchmarks._bench._client import COUNTER_DIGITS, chat_body_parts
from benchmarks._bench._wrk import THREAD_STRIDE, WrkError, find_wrk, lua_script, parse_output
from benchmarks.fake_upstream import FakeUpstream

# Recorded from `wrk -t1 -c4 -d1s -s SCRIPT URL` against the fake upstream (50-chunk streams).
RECORDED = """\
Running 1s test @ http://127.0.0.1:8931
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     7.93ms    1.64ms  18.99ms   87.15%
    Req/Sec   504.10     45.47   575.00     60.00%
  503 requests in 1.00s, 5.81MB read
Requests/sec:    501.76
Transfer/sec:      5.79MB
WRK_JSON {"requests":503,"duration_us":1002479,"connect_errors":0,"read_errors":0,\
"write_errors":0,"status_errors":0,"timeouts":0,"latency_us":{"max":18991,"mean":7931.8,\
"p50":7558,"p90":9736,"p99":14620}}
"""


def test_a_recorded_run_is_read_in_milliseconds() -> None:
    result = parse_output(RECORDED)

    assert result.generator == "wrk"
    assert (result.requests, result.errors, result.incomplete) == (503, 0, 0)
    assert result.seconds == pytest.approx(1.002479)
    assert result.rate == pytest.approx(503 / 1.002479)
    assert result.latency is not None
    assert (result.latency.p50, result.latency.p90, result.latency.p99) == pytest.approx(
        (7.558, 9.736, 14.620)
    )
    assert result.latency.max == pytest.approx(18.991)
    assert result.latency.mean == pytest.approx(7.9318)
    assert result.ttft is None


def test_error_statuses_are_errors_not_requests() -> None:
    output = RECORDED.replace('"status_errors":0', '"status_errors":3').replace(
        '"timeouts":0', '"timeouts":2'
    )

    result = parse_output(output)

    assert (result.requests, result.errors) == (500, 5)


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("unable to connect to 127.0.0.1:1 Connection refused\n", "printed no summary line"),
        ('WRK_JSON {"requests": 1\n', "malformed"),
    ],
)
def test_output_without_a_good_summary_line_is_an_error(output: str, message: str) -> None:
    with pytest.raises(WrkError, match=message):
        parse_output(output)


def test_the_script_escapes_what_lua_strings_cannot_hold() -> None:
    script = lua_script(
        "/v1/chat/completions",
        b'{"a":"\\\\',
        b'"}\n\xff',
        {"authorization": 'Bearer "k"'},
        first=7,
    )

    assert 'local before = "{\\34a\\34:\\34\\92\\92"' in script
    assert 'local after = "\\34}\\10\\255"' in script
    assert '["authorization"] = "Bearer \\34k\\34"' in script
    assert f'thread:set("offset", 7 + threads * {THREAD_STRIDE})' in script


@pytest.mark.skipif(find_wrk() is None, reason="wrk is not installed")
async def test_wrk_sends_distinct_requests_and_reports(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    wrk = find_wrk()
    assert wrk is not None
    before, after = chat_body_parts("fake-gpt", stream=False)
    script = tmp_path / "bench.lua"
    script.write_text(
        lua_script(
            "/v1/chat/completions", before, after, {"content-type": "application/json"}, first=40
        )
    )

    with trio.fail_after(30):
        result = await trio.run_process(
            [wrk, "-t1", "-c2", "-d1s", "-s", str(script), fake_upstream.url],
            capture_stdout=True,
            capture_stderr=True,
        )

    measured = parse_output(result.stdout.decode())
    texts = [r.body["messages"][0]["content"] for r in fake_upstream.requests]
    assert measured.requests > 0
    assert measured.errors == 0
    # wrk may count fewer than it sent (those still running at the end), never more.
    assert len(texts) >= measured.requests
    assert len(set(texts)) == len(texts)
    counters = sorted(int(text.removeprefix("benchmark request ")) for text in texts)
    assert all(len(text) == len("benchmark request ") + COUNTER_DIGITS for text in texts)
    # From the thread's first counter on (wrk builds one request it never sends at start).
    assert 40 <= counters[0] <= 41
    assert counters[-1] < 40 + THREAD_STRIDE
