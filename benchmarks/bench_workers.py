"""How `llm-proxy serve --workers N` spreads load over its workers.

Starts the fake upstream, then for each N: `llm-proxy serve --workers N` (the minimal or
recommended stack of `llm-proxy bench`) pinned to the CPUs given with `--proxy-cpus`, and
wrk pinned to `--load-cpus` (keep-alive connections, whole answers). For each worker it
reports its share of the proxy's CPU time and of its write system calls during the load
(every request costs a worker the same writes: the upstream request, the answer, a log
line), which is its share of the requests; and the requests per second. The minimal stack
logs nothing per request and socket sends are not counted as writes, so for it only the
CPU share shows.

    python -m benchmarks.bench_workers [--workers 1,2] [--connections 32] [--duration 5]
        [--proxy-cpus 0] [--load-cpus 1] [--stack minimal|recommended]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._bench._harness import (
    _MINIMAL,
    _RECOMMENDED,
    CLIENT_KEY,
    MODEL,
    UPSTREAM_KEY,
)
from benchmarks._bench._proc import TICKS_PER_SECOND, cpu_ticks, descendants
from benchmarks._bench._wrk import lua_script, parse_output
from benchmarks.fake_upstream import READY

PROC = Path("/proc")


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_for(log: Path, marker: str, timeout: float = 60.0) -> str:
    """The rest of the first line of `log` that contains `marker`."""
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        for line in log.read_text(errors="replace").splitlines():
            if marker in line:
                return line.split(marker, 1)[1].strip()
        time.sleep(0.1)
    raise SystemExit(f"`{marker}` never appeared in {log}:\n{log.read_text(errors='replace')}")


def _worker_counters(pid: int) -> dict[int, tuple[int, int]]:
    """Each worker process of the server: (CPU ticks, write system calls) so far."""
    counters = {}
    # One worker serves in the server process itself; several are its children.
    for child in [pid, *descendants(pid)]:
        try:
            stat = (PROC / str(child) / "stat").read_text()
            io = (PROC / str(child) / "io").read_text()
        except OSError:
            continue
        writes = next(int(line.split()[1]) for line in io.splitlines() if line.startswith("syscw"))
        counters[child] = (cpu_ticks(stat, children=False), writes)
    return counters


def measure(args: argparse.Namespace, workers: int, upstream: str, directory: Path) -> str:
    config = directory / f"proxy-{workers}.toml"
    template = _RECOMMENDED if args.stack == "recommended" else _MINIMAL
    # Each worker keeps its own state here: this measures how connections spread.
    config.write_text(
        template.format(upstream=upstream, model=MODEL)
        + "\n[server]\nallow_per_worker_state = true\n"
    )
    env = dict(
        os.environ,
        LLM_PROXY_BENCH_UPSTREAM_KEY=UPSTREAM_KEY,
        LLM_PROXY_BENCH_CLIENT_KEY=CLIENT_KEY,
    )
    log = directory / f"proxy-{workers}.log"
    proxy_bin = str(Path(sys.executable).parent / "llm-proxy")
    command = ["taskset", "-c", args.proxy_cpus, proxy_bin, "serve", "--config", str(config)]
    command += ["--port", "0", "--workers", str(workers)]
    server = _start(command, env, log)
    try:
        found = re.match(r"[\w.:\[\]-]+", _wait_for(log, "http://", 60.0))
        assert found is not None
        url = "http://" + found.group()
        time.sleep(0.5)
        body = b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"user","content":"q'
        script = directory / "post.lua"
        headers = {"content-type": "application/json", "authorization": f"Bearer {CLIENT_KEY}"}
        script.write_text(lua_script("/v1/chat/completions", body, b'"}]}', headers))
        wrk = ["taskset", "-c", args.load_cpus, "wrk", "-t1", f"-c{args.connections}"]
        wrk += [f"-d{args.duration}s", "--latency", "-s", str(script), url]
        before = _worker_counters(server.pid)
        output = subprocess.run(wrk, capture_output=True, text=True, check=True).stdout
        after = _worker_counters(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    measured = parse_output(output)
    # A worker that served requests spent CPU on them; the minimal stack logs nothing per
    # request at its `warning` level, so its workers may make no write system call at all.
    deltas = {
        pid: (after[pid][0] - before[pid][0], after[pid][1] - before[pid][1])
        for pid in after
        if pid in before and (after[pid][1] > before[pid][1] or after[pid][0] > before[pid][0])
    }
    cpu_total = sum(d[0] for d in deltas.values()) or 1
    writes_total = sum(d[1] for d in deltas.values())
    shares = ", ".join(
        f"{cpu * 100 / cpu_total:.0f}% / "
        + (f"{writes * 100 / writes_total:.0f}%" if writes_total else "-")
        for cpu, writes in sorted(deltas.values(), reverse=True)
    )
    cpu_seconds = cpu_total / TICKS_PER_SECOND
    return (
        f"| {workers} | {measured.requests / measured.seconds:,.0f} | "
        f"{cpu_seconds * 1e6 / max(1, measured.requests):.0f} | {len(deltas)} | {shares} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=5, help="seconds per step")
    parser.add_argument("--proxy-cpus", default="0", help="taskset CPU list for the proxy")
    parser.add_argument("--load-cpus", default="1", help="taskset CPU list for wrk")
    parser.add_argument("--stack", choices=["minimal", "recommended"], default="minimal")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        raise SystemExit("needs wrk and taskset")
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        log = directory / "upstream.log"
        upstream_cmd = ["taskset", "-c", args.load_cpus, sys.executable]
        upstream_cmd += ["-m", "benchmarks.fake_upstream", "--port", "0"]
        upstream = _start(upstream_cmd, dict(os.environ), log)
        try:
            url = _wait_for(log, READY)
            rows = [measure(args, int(n), url, directory) for n in args.workers.split(",")]
        finally:
            upstream.terminate()
            upstream.wait(30)
    print(
        f"{args.stack} stack, {args.connections} connections, proxy on CPUs {args.proxy_cpus}, "
        f"wrk and the fake upstream on CPUs {args.load_cpus}, {args.duration} s per row\n"
    )
    print("| workers | requests/s | proxy CPU us/request | workers busy | share: CPU / writes |")
    print("|---:|---:|---:|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
