"""The HTTP scenarios: which servers run, what load each gets, and what is recorded.

One fake upstream serves the whole run. Each server under test runs in front of it in
turn (the fake itself first, measured directly, as the baseline) and gets the same steps:
for whole answers and for streams, closed loops at each concurrency level (wrk when it is
there) and open loops at each fixed rate (the built-in generator). Around every step the
harness reads the CPU time of the server under test and of the upstream from /proc.
"""

from __future__ import annotations

import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import msgspec
import trio

from benchmarks.redis_server import RedisServer

from ._client import ConnectionPool, chat_body_parts, chat_requests
from ._load import Measured, closed_loop, http_exchange, measure, open_loop, send_times
from ._proc import sample
from ._procs import Child, Placement, StartError, find_tool, pin, running
from ._profile import Profile, summarize_folded
from ._wrk import lua_script, parse_output

__all__ = [
    "LABELS",
    "Plan",
    "Progress",
    "Row",
    "TargetInfo",
    "find_litellm",
    "run_http",
]

MODEL = "fake-gpt"
UPSTREAM_KEY = "sk-bench-upstream-0123456789"
CLIENT_KEY = "sk-bench-client-0123456789"
_PYTHON = sys.executable

LABELS = {
    "direct": "direct to the fake upstream",
    "relay": "bare relay (hypercorn-trio + httpx)",
    "engine": "engine bare relay (http11 server + client)",
    "minimal": "llm-proxy, minimal stack",
    "recommended": "llm-proxy, recommended stack",
    "redis": "llm-proxy, recommended stack, Redis store",
    "litellm": "LiteLLM proxy",
}

# The one route both proxy configurations share: the model, to the fake upstream.
_ROUTE = """
[[providers]]
name = "fake"
kind = "openai"
base_url = "{upstream}/v1"
api_key_env = "LLM_PROXY_BENCH_UPSTREAM_KEY"

[[models]]
name = "{model}"
provider = "fake"
"""

_MINIMAL = (
    """\
# llm-proxy in front of the fake upstream with as little as the configuration allows:
# the access log (at `warning`, so a success writes nothing), metrics, and the timeouts;
# no retries.
[log]
format = "json"
level = "warning"
"""
    + _ROUTE
    + """
[retry]
max_attempts = 1
"""
)

_RECOMMENDED = (
    """\
# llm-proxy in front of the fake upstream with the recommended stack in full: an access
# log line per request, metrics, a key, rate and concurrency limits (never reached), a
# cache (every benchmark request is distinct, so these are misses), retries, timeouts.
[log]
format = "json"
level = "info"
"""
    + _ROUTE
    + """
[[keys]]
id = "bench"
key_env = "LLM_PROXY_BENCH_CLIENT_KEY"

[ratelimit]
requests_per_minute = 100000000
tokens_per_minute = 1000000000

[concurrency]
max_concurrency = 1000

[cache]
enabled = true
"""
)

_LITELLM = """\
# LiteLLM's proxy in front of the fake upstream: one OpenAI-compatible model, no extras.
# It refuses to start without a master key (clients then send it as their key); it keeps
# no database, so checking it is a comparison.
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: {upstream}/v1
      api_key: {key}
general_settings:
  master_key: {master_key}
litellm_settings:
  telemetry: false
"""

_LITELLM_ENV = {
    # No network at start-up (the model price list ships with the package) and no chatter.
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOG": "ERROR",
    "LITELLM_TELEMETRY": "False",
}


class Plan(msgspec.Struct, frozen=True):
    """What to run.

    Attributes:
      targets: the servers to measure, in order (keys of `LABELS`); `direct` is the
        baseline the others are compared with.
      concurrency: closed-loop concurrency levels.
      rates: open-loop rates (requests per second) for whole answers.
      stream_rates: open-loop rates for streams.
      chunks: content chunks per streamed answer.
      duration: seconds per step.
      max_requests: at most this many requests per closed-loop step of the built-in
        generator.
      use_wrk: the wrk executable for closed loops; None: the built-in generator.
      warmup: seconds of closed-loop load before each server's first step.
      litellm: the `litellm` executable, when it is compared.
      py_spy: the `py-spy` executable, to profile the relay and the proxies under load
        after their measured steps; None: no profiles.
      profile_seconds: how long each profile samples.
      settle: seconds of rest before each step, so that a server finishes what the last
        step left (an overloaded open loop abandons requests) before it is measured again.
      workers: worker processes of each llm-proxy target (`serve --workers`); their CPU
        is counted with the parent's.
    """

    targets: tuple[str, ...]
    concurrency: tuple[int, ...]
    rates: tuple[float, ...]
    stream_rates: tuple[float, ...]
    chunks: int
    duration: float
    max_requests: int
    use_wrk: str | None
    warmup: float
    litellm: str | None = None
    py_spy: str | None = None
    profile_seconds: int = 5
    settle: float = 0.5
    workers: int = 1


class Row(msgspec.Struct, kw_only=True):
    """One step's results.

    Latencies and TTFT are in milliseconds; CPU is microseconds per completed request;
    `added_*` compare with the direct run of the same step (None for the direct rows).
    """

    target: str
    mode: str
    loop: str
    concurrency: int | None
    offered_rps: float | None
    generator: str
    requests: int
    errors: int
    incomplete: int
    seconds: float
    rps: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    max_lag_ms: float
    server_cpu_us: float | None
    upstream_cpu_us: float | None
    generator_cpu_us: float | None
    added_p50_ms: float | None = None
    added_p99_ms: float | None = None
    added_ttft_p50_ms: float | None = None
    added_ttft_p99_ms: float | None = None


class TargetInfo(msgspec.Struct, kw_only=True):
    """A server the run measured (or meant to).

    Attributes:
      key: its key in `LABELS`.
      label: how the report names it.
      startup_seconds: from its start until it served (None for the upstream itself).
      peak_rss_mb: its peak resident memory over the run (VmHWM).
      skipped: why it did not run, when it did not.
    """

    key: str
    label: str
    startup_seconds: float | None = None
    peak_rss_mb: float | None = None
    skipped: str | None = None


class Progress:
    """One line per step on stderr, with the time since the run started."""

    def __init__(self, write: Callable[[str], object] | None = None) -> None:
        self.started = time.monotonic()
        self._write = write or (lambda line: print(line, file=sys.stderr, flush=True))

    def say(self, text: str) -> None:
        """Print one progress line."""
        self._write(f"[{time.monotonic() - self.started:6.1f} s] {text}")


# Each step's requests carry counters from a block of their own: every request a server
# sees in a run is distinct, so the recommended stack's cache never answers one.
_STEP_BLOCK = 10**9


class _Server(msgspec.Struct):
    key: str
    host: str
    port: int
    pid: int
    headers: dict[str, str]
    startup_seconds: float | None
    steps: int = 0

    def first_counter(self) -> int:
        """The first request counter of the next step."""
        self.steps += 1
        return self.steps * _STEP_BLOCK


def find_litellm() -> str | None:
    """The `litellm` executable (the `compare` extra), or None when it is not installed."""
    return find_tool("litellm")


def _free_port() -> int:
    # For LiteLLM, which cannot report a port it picked itself; the race is harmless here.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
    return host, int(port)


@asynccontextmanager
async def _start(
    key: str, upstream: Child, upstream_url: str, plan: Plan, placement: Placement, out: Path
) -> AsyncIterator[_Server]:
    """Run the server `key` names in front of the upstream; the upstream itself for `direct`."""
    if key == "direct":
        host, port = _host_port(upstream_url)
        yield _Server(key, host, port, upstream.pid, {}, None)
        return
    env = {
        "LLM_PROXY_BENCH_UPSTREAM_KEY": UPSTREAM_KEY,
        "LLM_PROXY_BENCH_CLIENT_KEY": CLIENT_KEY,
    }
    headers: dict[str, str] = {}
    ready: str | None = None
    health: str | None = None
    redis: RedisServer | None = None
    if key == "relay":
        command = [_PYTHON, "-m", "benchmarks._bench._relay", "--upstream", upstream_url]
        ready = r"relay ready on (http://\S+)"
        headers = {"authorization": f"Bearer {UPSTREAM_KEY}"}
    elif key == "engine":
        command = [_PYTHON, "-m", "benchmarks._bench._engine_relay", "--upstream", upstream_url]
        ready = r"engine relay ready on (http://\S+)"
        headers = {"authorization": f"Bearer {UPSTREAM_KEY}"}
    elif key in ("minimal", "recommended", "redis"):
        config = out / f"proxy-{key}.toml"
        template = _MINIMAL if key == "minimal" else _RECOMMENDED
        text = template.format(upstream=upstream_url, model=MODEL)
        if key == "redis":
            redis = _redis_server(out / "redis")
            text += f'\n[store]\nbackend = "redis"\nurl = "{redis.url}"\n'
        elif plan.workers > 1:
            # The limits are never reached and every request misses the cache: state per
            # worker changes nothing measured here.
            text = "[server]\nallow_per_worker_state = true\n\n" + text
        config.write_text(text)
        command = [_PYTHON, "-m", "llm_proxy.cli", "serve", "--config", str(config), "--port", "0"]
        if plan.workers > 1:
            command += ["--workers", str(plan.workers)]
        ready = r"at (http://127\.0\.0\.1:\d+)/v1"
        if key != "minimal":
            headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    elif key == "litellm":
        if plan.litellm is None:
            raise ValueError("LiteLLM is not installed")
        config = out / "litellm.yaml"
        config.write_text(
            _LITELLM.format(
                upstream=upstream_url, model=MODEL, key=UPSTREAM_KEY, master_key=CLIENT_KEY
            )
        )
        port = _free_port()
        command = [plan.litellm, "--config", str(config), "--host", "127.0.0.1"]
        command += ["--port", str(port), "--num_workers", "1"]
        health = f"http://127.0.0.1:{port}/health/liveliness"
        env.update(_LITELLM_ENV)
        headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    else:
        raise ValueError(f"unknown target {key!r}")
    try:
        async with running(
            LABELS[key],
            command,
            ready=ready,
            health=health,
            log=out / f"{key}.log",
            cpus=placement.target,
            env=env,
            ready_within=120 if key == "litellm" else 60,
        ) as child:
            host, port = _host_port(child.url)
            yield _Server(key, host, port, child.pid, headers, child.startup_seconds)
    finally:
        if redis is not None:
            redis.stop()


def _redis_server(directory: Path) -> RedisServer:
    """A fresh `redis-server` for the Redis-backed target (`[store] backend = "redis"`).

    Raises:
      StartError: redis-server is not installed.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise StartError("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(binary, directory)
    server.start()
    return server


def _cpu(pid: int) -> float | None:
    try:
        return sample(pid).cpu_seconds
    except OSError:
        return None


def _per_request(before: float | None, after: float | None, requests: int) -> float | None:
    if before is None or after is None or not requests:
        return None
    return (after - before) / requests * 1e6


async def _wrk_step(
    wrk: str,
    server: _Server,
    stream: bool,
    concurrency: int,
    duration: float,
    cpus: frozenset[int],
    out: Path,
) -> Measured:
    """A closed loop at `concurrency` with wrk, for `duration` seconds (whole, at least one)."""
    before, after = chat_body_parts(MODEL, stream=stream)
    headers = {"content-type": "application/json", **server.headers}
    script = out / f"wrk-{server.key}-{'stream' if stream else 'whole'}.lua"
    script.write_text(
        lua_script("/v1/chat/completions", before, after, headers, first=server.first_counter())
    )
    seconds = max(1, round(duration))
    command = [wrk, "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s"]
    command += ["-s", str(script), f"http://{server.host}:{server.port}"]
    with trio.fail_after(seconds + 30):
        result = await trio.run_process(
            command,
            capture_stdout=True,
            capture_stderr=True,
            preexec_fn=lambda: pin(cpus),
        )
    return parse_output(result.stdout.decode(errors="replace"))


# Enough for a few hundred requests per second at a few hundred milliseconds each; more
# would queue in the generator, which an open loop counts as latency, as a client would.
_OPEN_LOOP_CONNECTIONS = 256


async def _builtin_step(
    server: _Server, stream: bool, *, concurrency: int | None, rate: float | None, plan: Plan
) -> Measured:
    """A closed loop at `concurrency`, or an open loop at `rate`, with the built-in generator."""
    make = chat_requests(
        server.host,
        server.port,
        model=MODEL,
        stream=stream,
        headers=server.headers,
        first=server.first_counter(),
    )
    pool = ConnectionPool(server.host, server.port, concurrency or _OPEN_LOOP_CONNECTIONS)
    exchange = http_exchange(pool, make)
    try:
        if concurrency is not None:
            records = await closed_loop(
                exchange,
                concurrency=concurrency,
                duration=plan.duration,
                max_requests=plan.max_requests,
            )
        else:
            assert rate is not None
            count = max(1, round(rate * plan.duration))
            times = send_times(trio.current_time() + 0.01, rate, count)
            records = await open_loop(times, exchange, cutoff=times[-1] + max(2.0, plan.duration))
            return measure(records, cutoff=trio.current_time(), span=count / rate)
        return measure(records, cutoff=trio.current_time())
    finally:
        await pool.aclose()


async def _step(
    server: _Server,
    upstream_pid: int,
    stream: bool,
    *,
    concurrency: int | None = None,
    rate: float | None = None,
    plan: Plan,
    placement: Placement,
    out: Path,
) -> Row:
    """Run one step and read what it cost the server, the upstream and the generator."""
    server_before = _cpu(server.pid)
    upstream_before = _cpu(upstream_pid) if upstream_pid != server.pid else None
    own_before = time.process_time()
    if concurrency is not None and plan.use_wrk is not None:
        measured = await _wrk_step(
            plan.use_wrk, server, stream, concurrency, plan.duration, placement.generator, out
        )
        own = None
    else:
        measured = await _builtin_step(
            server, stream, concurrency=concurrency, rate=rate, plan=plan
        )
        own = time.process_time() - own_before
    done = measured.requests
    latency, ttft = measured.latency, measured.ttft
    return Row(
        target=server.key,
        mode="stream" if stream else "whole",
        loop="closed" if concurrency is not None else "open",
        concurrency=concurrency,
        offered_rps=rate,
        generator=measured.generator,
        requests=done,
        errors=measured.errors,
        incomplete=measured.incomplete,
        seconds=measured.seconds,
        rps=measured.rate,
        p50_ms=latency.p50 if latency else None,
        p90_ms=latency.p90 if latency else None,
        p99_ms=latency.p99 if latency else None,
        max_ms=latency.max if latency else None,
        ttft_p50_ms=ttft.p50 if ttft and stream else None,
        ttft_p99_ms=ttft.p99 if ttft and stream else None,
        max_lag_ms=measured.max_lag_ms,
        server_cpu_us=_per_request(server_before, _cpu(server.pid), done),
        upstream_cpu_us=_per_request(upstream_before, _cpu(upstream_pid), done)
        if upstream_before is not None
        else None,
        generator_cpu_us=own / done * 1e6 if own is not None and done else None,
    )


def _describe(row: Row) -> str:
    where = f"c={row.concurrency}" if row.loop == "closed" else f"{row.offered_rps:g} req/s"
    text = f"{LABELS[row.target]:<36} {row.mode:<6} {row.loop:<6} {where:<11} {row.generator:<7}"
    text += f" {row.rps:7.0f} req/s"
    if row.p50_ms is not None and row.p99_ms is not None:
        text += f"  p50 {row.p50_ms:7.2f} ms  p99 {row.p99_ms:7.2f} ms"
    if row.server_cpu_us is not None:
        text += f"  server CPU {row.server_cpu_us:6.0f} us/req"
    if row.errors or row.incomplete:
        text += f"  errors {row.errors} incomplete {row.incomplete}"
    return text


async def _measure_server(
    server: _Server,
    upstream_pid: int,
    plan: Plan,
    placement: Placement,
    out: Path,
    progress: Progress,
) -> list[Row]:
    rows: list[Row] = []
    for stream in (False, True):
        warmup = msgspec.structs.replace(plan, duration=plan.warmup)
        await _builtin_step(server, stream, concurrency=4, rate=None, plan=warmup)
        steps: list[tuple[int | None, float | None]] = [(c, None) for c in plan.concurrency]
        steps += [(None, r) for r in (plan.stream_rates if stream else plan.rates)]
        for concurrency, rate in steps:
            await trio.sleep(plan.settle)
            row = await _step(
                server,
                upstream_pid,
                stream,
                concurrency=concurrency,
                rate=rate,
                plan=plan,
                placement=placement,
                out=out,
            )
            progress.say(_describe(row))
            rows.append(row)
    return rows


PROFILED = ("relay", "engine", "minimal", "recommended", "redis")
"""The servers a run with py-spy profiles: the floor, and the proxy's two stacks."""


async def _profile(
    server: _Server, stream: bool, plan: Plan, placement: Placement, out: Path
) -> Profile:
    """Sample the server with py-spy under closed-loop load at the highest concurrency.

    py-spy stops the process for each sample, so the load's own numbers are not kept.
    """
    assert plan.py_spy is not None
    mode = "stream" if stream else "whole"
    raw = out / f"profile-{server.key}-{mode}.txt"
    seconds = plan.profile_seconds
    load = msgspec.structs.replace(plan, duration=seconds + 1.0, max_requests=10**6)
    command = [plan.py_spy, "record", "--pid", str(server.pid), "--duration", str(seconds)]
    command += ["--rate", "100", "--format", "raw", "--output", str(raw)]
    concurrency = max(plan.concurrency)
    async with trio.open_nursery() as nursery:
        if plan.use_wrk is not None:
            wrk = partial(_wrk_step, plan.use_wrk, server, stream, concurrency, load.duration)
            nursery.start_soon(wrk, placement.generator, out)
        else:
            builtin = partial(_builtin_step, server, stream, concurrency=concurrency, rate=None)
            nursery.start_soon(partial(builtin, plan=load))
        with trio.fail_after(seconds + 30):
            await trio.run_process(
                command,
                capture_stdout=True,
                capture_stderr=True,
                preexec_fn=lambda: pin(placement.generator),
            )
    text = await trio.Path(raw).read_text()
    return summarize_folded(text.splitlines(), label=f"{LABELS[server.key]}, {mode}", raw=raw.name)


async def run_http(
    plan: Plan, placement: Placement, out: Path, progress: Progress
) -> tuple[list[Row], list[TargetInfo], list[Profile]]:
    """Start the fake upstream, then measure each planned server in front of it in turn.

    Args:
      plan: the servers and steps.
      placement: where the upstream, the servers and the generators run. The caller pins
        the harness itself (the built-in generator) to `placement.generator`.
      out: where configurations, wrk scripts and server logs go.
      progress: told about every step.

    Returns:
      Every step's row, what the run learnt about each server, and the profiles.
    """
    command = [_PYTHON, "-m", "benchmarks.fake_upstream", "--chunks", str(plan.chunks)]
    rows: list[Row] = []
    infos: list[TargetInfo] = []
    profiles: list[Profile] = []
    async with running(
        "fake upstream",
        command,
        ready=r"fake upstream ready on (http://\S+)",
        log=out / "upstream.log",
        cpus=placement.upstream,
    ) as upstream:
        upstream_url = upstream.url
        progress.say(f"fake upstream ready at {upstream_url} ({plan.chunks} chunks per stream)")
        for key in plan.targets:
            info = TargetInfo(key=key, label=LABELS[key])
            infos.append(info)
            try:
                async with _start(key, upstream, upstream_url, plan, placement, out) as server:
                    info.startup_seconds = server.startup_seconds
                    if server.startup_seconds is not None:
                        progress.say(f"{LABELS[key]} ready in {server.startup_seconds:.1f} s")
                    rows += await _measure_server(
                        server, upstream.pid, plan, placement, out, progress
                    )
                    if plan.py_spy is not None and key in PROFILED:
                        for stream in (False, True):
                            profile = await _profile(server, stream, plan, placement, out)
                            profiles.append(profile)
                            progress.say(f"profiled {profile.label}: {profile.samples} samples")
                    info.peak_rss_mb = sample(server.pid).peak_rss_kib / 1024
            except StartError as exc:
                # One server that cannot start must not cost the others their numbers.
                info.skipped = str(exc)
                progress.say(f"{LABELS[key]} skipped: {exc}")
    return rows, infos, profiles
