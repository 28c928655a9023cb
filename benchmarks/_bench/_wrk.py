"""Closed-loop saturation with wrk (a C load generator), when it is installed.

wrk's LuaJIT script builds each POST body (a counter makes every request distinct, like the
built-in generator's) and, when the run is over, prints one line of JSON with the counts
and latency percentiles, which `parse_output` reads. wrk measures from the moment a
request is written to the end of its answer, so it only suits closed loops.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping

import msgspec

from ._client import COUNTER_DIGITS
from ._load import Measured
from ._stats import Summary

__all__ = ["MARKER", "THREAD_STRIDE", "WrkError", "find_wrk", "lua_script", "parse_output"]

MARKER = "WRK_JSON "
THREAD_STRIDE = 10**8
"""Counters each wrk thread may use before it meets the next thread's."""

_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'MARKER{"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"latency_us":{"max":%d,"mean":%.1f,"p50":%d,"p90":%d,"p99":%d}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.max, latency.mean,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
""".replace("MARKER", MARKER)


class WrkError(Exception):
    """wrk failed, or its output lacks the summary line the script prints."""


def find_wrk() -> str | None:
    """The path of the wrk executable, or None when it is not installed."""
    return shutil.which("wrk")


def _lua_string(data: bytes) -> str:
    # Decimal escapes for everything but plain printable ASCII: always a valid Lua string.
    return (
        '"' + "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\{b}" for b in data) + '"'
    )


def lua_script(
    path: str,
    body_before: bytes,
    body_after: bytes,
    headers: Mapping[str, str],
    *,
    first: int = 0,
) -> str:
    """A wrk script that POSTs `body_before + counter + body_after` to `path`.

    The counter has `COUNTER_DIGITS` digits, so every body has the same length. Thread t
    counts from `first + t * THREAD_STRIDE`, so requests are distinct across threads.
    """
    entries = ", ".join(
        f"[{_lua_string(name.encode())}] = {_lua_string(value.encode())}"
        for name, value in headers.items()
    )
    return f"""
local path = {_lua_string(path.encode())}
local before = {_lua_string(body_before)}
local after = {_lua_string(body_after)}
local headers = {{{entries}}}
local counter = 0
local threads = 0

setup = function(thread)
  thread:set("offset", {first} + threads * {THREAD_STRIDE})
  threads = threads + 1
end

init = function(args)
  counter = offset
end

request = function()
  local body = before .. string.format("%0{COUNTER_DIGITS}d", counter) .. after
  counter = counter + 1
  return wrk.format("POST", path, headers, body)
end
{_DONE}"""


class _Latency(msgspec.Struct):
    max: float
    mean: float
    p50: float
    p90: float
    p99: float


class _Summary(msgspec.Struct):
    requests: int
    duration_us: int
    connect_errors: int
    read_errors: int
    write_errors: int
    status_errors: int
    timeouts: int
    latency_us: _Latency


def parse_output(output: str) -> Measured:
    """Read the summary line of a wrk run with a `lua_script` script.

    wrk counts an answer with a status of 400 or more as a completed request and as a
    status error; here it counts as an error only. Connect, read, write errors and
    timeouts are errors too.

    Raises:
      WrkError: there is no summary line, or it is not what the script prints.
    """
    line = next((line for line in output.splitlines() if line.startswith(MARKER)), None)
    if line is None:
        raise WrkError("wrk printed no summary line:\n" + output[-2000:])
    try:
        summary = msgspec.json.decode(line[len(MARKER) :], type=_Summary)
    except msgspec.DecodeError as exc:
        raise WrkError(f"wrk's summary line is malformed ({exc}): {line}") from None
    ok = summary.requests - summary.status_errors
    latency = summary.latency_us
    errors = (
        summary.status_errors
        + summary.connect_errors
        + summary.read_errors
        + summary.write_errors
        + summary.timeouts
    )
    return Measured(
        generator="wrk",
        requests=ok,
        errors=errors,
        incomplete=0,
        seconds=summary.duration_us / 1e6,
        latency=Summary(
            count=summary.requests,
            p50=latency.p50 / 1e3,
            p90=latency.p90 / 1e3,
            p99=latency.p99 / 1e3,
            max=latency.max / 1e3,
            mean=latency.mean / 1e3,
        )
        if summary.requests
        else None,
        ttft=None,
        max_lag_ms=0.0,
    )
