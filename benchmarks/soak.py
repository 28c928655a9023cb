"""Soak: a long bounded mix of good, refused and abandoned requests, and the server's memory.

Starts `llm-proxy serve` in a subprocess on 127.0.0.1 (a free port) with mock models and
the recommended middlewares (access log at `info`, metrics, rate limit, concurrency, cache,
retry, timeout), then runs a mix of requests, each on a fresh connection, from a few
concurrent tasks, until `--requests` were sent or `--seconds` passed, whichever is first:

- *whole* and *stream*: good chat completions (a few hundred distinct prompts, so the cache
  both misses and hits), answered 200 (a stream must end with `[DONE]`);
- *malformed*: requests the HTTP layer refuses with 400 or 431 (garbage, smuggling,
  a bad chunk size, too many headers);
- *oversized*: a body over `max_body_bytes`, declared or sent chunked: 413;
- *disconnect*: a slow stream the client abandons after its first event.

`--kinds malformed,oversized` sends only some of them (a churn of refused connections).

It reports the server's resident memory (VmRSS from /proc/PID/status) at the start, after
the warm-up and at the end, its peak (VmHWM), the count of each kind, every unexpected
answer or failure, and the error lines the server logged. It exits 1 when anything was
unexpected.

    python -m benchmarks.soak --seconds 60 --requests 200000 [--concurrency 8]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from benchmarks._bench._proc import status_kib

MAX_BODY = 64 * 1024
CONFIG = f"""
[server]
host = "127.0.0.1"
port = 0
max_body_bytes = {MAX_BODY}
max_headers = 50

[log]
format = "json"
level = "info"

[[providers]]
name = "mock"
kind = "mock"
options = {{ chunks = 8 }}

[[providers]]
name = "mock-slow"
kind = "mock"
options = {{ chunks = 40, chunk_delay = 0.01 }}

[[models]]
name = "mock"
provider = "mock"

[[models]]
name = "mock-slow"
provider = "mock-slow"

[ratelimit]
requests_per_minute = 100000000
tokens_per_minute = 100000000000

[concurrency]
max_concurrency = 256

[cache]
enabled = true
"""

KINDS = ("whole", "stream", "malformed", "oversized", "disconnect")
MIX = ("whole", "stream", "malformed", "whole", "stream", "oversized", "malformed", "disconnect")
"""The order kinds are sent in, round and round: 2 good : 1 refused : 1/8 abandoned."""
DEADLINE = 30.0
"""Seconds one exchange may take before it counts as failed."""

MALFORMED = (
    (b"THIS IS NOT HTTP\r\n\r\n", b"400"),
    (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: soak\r\ncontent-length: 5\r\n"
        b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"400",
    ),
    (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: soak\r\ntransfer-encoding: chunked\r\n"
        b"\r\nzz\r\n",
        b"400",
    ),
    (b"GET /v1/models HTTP/1.1\r\n" + b"x-filler: soak\r\n" * 60 + b"\r\n", b"431"),
)
OVERSIZED = (
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: soak\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\n\r\n" % (MAX_BODY + 1),
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: soak\r\ncontent-type: application/json\r\n"
    b"transfer-encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n"
    % (MAX_BODY + 1, b" " * (MAX_BODY + 1)),
)


def chat(model: str, *, stream: bool, prompt: str) -> bytes:
    """A chat completion request on a connection that closes after the answer."""
    body = json.dumps(
        {"model": model, "stream": stream, "messages": [{"role": "user", "content": prompt}]}
    ).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: soak\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body)
    )


def rss_kib(pid: int, name: str = "VmRSS") -> int:
    """A memory figure of the process from /proc/PID/status, in KiB."""
    value = status_kib(Path(f"/proc/{pid}/status").read_text(), name)
    if value is None:
        raise RuntimeError(f"/proc/{pid}/status has no {name}")
    return value


@dataclass
class Tally:
    """What was sent and what went wrong."""

    sent: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def error(self, kind: str, what: str) -> None:
        self.errors[kind] += 1
        self.examples.setdefault(kind, what)


async def read_all(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = bytearray()
    while data := await stream.receive_some(65536):
        received += data
    return bytes(received)


async def exchange(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        return await read_all(stream)


def status_of(answer: bytes) -> bytes:
    return answer[9:12] if answer.startswith(b"HTTP/1.1 ") else b"none"


async def abandon(port: int, data: bytes) -> bytes:
    """Send a streaming request, read until its first event, then hang up."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        received = b""
        while b"data: " not in received:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            received += chunk
    return received


async def one(kind: str, i: int, port: int, distinct: int, tally: Tally) -> None:
    """Send request number `i` of `kind` and check its answer."""
    prompt = f"soak prompt {i % distinct}"
    if kind == "whole":
        answer = await exchange(port, chat("mock", stream=False, prompt=prompt))
        ok = status_of(answer) == b"200" and b'"choices"' in answer
    elif kind == "stream":
        answer = await exchange(port, chat("mock", stream=True, prompt=prompt))
        ok = status_of(answer) == b"200" and b"data: [DONE]" in answer
    elif kind == "malformed":
        data, expected = MALFORMED[i % len(MALFORMED)]
        answer = await exchange(port, data)
        ok = status_of(answer) == expected
    elif kind == "oversized":
        answer = await exchange(port, OVERSIZED[i % len(OVERSIZED)])
        ok = status_of(answer) == b"413"
    else:
        answer = await abandon(port, chat("mock-slow", stream=True, prompt=prompt))
        ok = status_of(answer) == b"200" and b"data: " in answer
    if not ok:
        tally.error(kind, answer[:200].decode("latin-1"))


async def drive(
    port: int,
    *,
    requests: int,
    seconds: float,
    concurrency: int,
    distinct: int,
    mix: Sequence[str],
    tally: Tally,
    on_done: Callable[[int], None],
) -> None:
    """Send `mix`, round and round, from `concurrency` tasks until `requests` were sent or
    time is up."""
    numbers: Iterator[int] = iter(range(requests))
    stop = trio.current_time() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        for i in numbers:
            if trio.current_time() >= stop:
                return
            kind = mix[i % len(mix)]
            tally.sent[kind] += 1
            try:
                with trio.fail_after(DEADLINE):
                    await one(kind, i, port, distinct, tally)
            except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                tally.error(kind, f"{type(exc).__name__}: {exc}")
            done += 1
            on_done(done)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)


@dataclass
class Report:
    command: str
    seconds: float
    tally: Tally
    rss_start: int
    rss_warm: int | None
    rss_end: int
    peak: int
    logged_errors: int
    tracebacks: int

    def lines(self) -> Iterator[str]:
        total = sum(self.tally.sent.values())
        errors = sum(self.tally.errors.values())
        yield f"Command: `{self.command}`"
        yield ""
        yield (
            f"{total:,} requests in {self.seconds:.1f} s ({total / self.seconds:,.0f}/s), "
            f"each on a fresh connection; {errors} unexpected; the server logged "
            f"{self.logged_errors} error lines and {self.tracebacks} tracebacks."
        )
        yield ""
        yield "| kind | sent | unexpected |"
        yield "|---|---:|---:|"
        for kind in KINDS:
            yield f"| {kind} | {self.tally.sent[kind]:,} | {self.tally.errors[kind]} |"
        yield ""
        warm = f"{self.rss_warm / 1024:.1f}" if self.rss_warm is not None else "-"
        yield "| server RSS | start | after warm-up | end | peak (VmHWM) |"
        yield "|---|---:|---:|---:|---:|"
        yield (
            f"| MB | {self.rss_start / 1024:.1f} | {warm} | {self.rss_end / 1024:.1f} "
            f"| {self.peak / 1024:.1f} |"
        )
        for kind, example in self.tally.examples.items():
            yield f"\nfirst unexpected {kind}: {example!r}"


async def soak(
    *,
    requests: int,
    seconds: float,
    concurrency: int,
    warmup: int,
    distinct: int,
    mix: Sequence[str],
    command: str,
) -> Report:
    with (
        tempfile.NamedTemporaryFile("w", suffix=".toml") as config,
        tempfile.TemporaryFile() as log,
    ):
        config.write(CONFIG)
        config.flush()
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "llm_proxy.cli", "serve", "--config", config.name],
            stdout=subprocess.PIPE,
            stderr=log,
        )
        try:
            assert process.stdout is not None
            output = b""
            with trio.fail_after(30):
                while not (match := re.search(rb"at http://127\.0\.0\.1:(\d+)/v1", output)):
                    data = await process.stdout.receive_some()
                    if not data:
                        raise RuntimeError("llm-proxy serve exited before it was ready")
                    output += data
            port = int(match[1])
            pid = process.pid
            rss_start = rss_kib(pid)
            rss_warm: int | None = None

            def on_done(done: int) -> None:
                nonlocal rss_warm
                if done == warmup:
                    rss_warm = rss_kib(pid)

            tally = Tally()
            started = time.perf_counter()
            await drive(
                port,
                requests=requests,
                seconds=seconds,
                concurrency=concurrency,
                distinct=distinct,
                mix=mix,
                tally=tally,
                on_done=on_done,
            )
            elapsed = time.perf_counter() - started
            await trio.sleep(1.0)  # let the server finish closing what the client closed
            if process.returncode is not None:
                raise RuntimeError(f"llm-proxy serve exited with {process.returncode}")
            rss_end, peak = rss_kib(pid), rss_kib(pid, "VmHWM")
        finally:
            process.terminate()
            with trio.move_on_after(30):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
        log.seek(0)
        logged_errors = tracebacks = 0
        for line in log:
            logged_errors += b'"level":"error"' in line
            tracebacks += line.startswith(b"Traceback")
    return Report(
        command, elapsed, tally, rss_start, rss_warm, rss_end, peak, logged_errors, tracebacks
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="longest run, in seconds")
    parser.add_argument("--requests", type=int, default=200_000, help="most requests to send")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument(
        "--warmup", type=int, default=2000, help="requests before the warm-up RSS reading"
    )
    parser.add_argument("--distinct", type=int, default=512, help="distinct prompts")
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help="the kinds to send, comma-separated (default: all, in the usual proportions)",
    )
    args = parser.parse_args(argv)
    kinds = set(args.kinds.split(","))
    if not kinds <= set(KINDS):
        parser.error(f"--kinds: choose among {', '.join(KINDS)}")
    mix = [kind for kind in MIX if kind in kinds]
    shown = " ".join(["python -m benchmarks.soak", *(argv if argv is not None else sys.argv[1:])])
    report = trio.run(
        lambda: soak(
            requests=args.requests,
            seconds=args.seconds,
            concurrency=args.concurrency,
            warmup=args.warmup,
            distinct=args.distinct,
            mix=mix,
            command=shown,
        )
    )
    for line in report.lines():
        print(line)
    bad = sum(report.tally.errors.values()) + report.logged_errors + report.tracebacks
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
