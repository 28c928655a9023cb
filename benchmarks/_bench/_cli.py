"""`llm-proxy bench`: options, the order of the run, and where its results go."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from ._harness import LABELS, Plan, Progress, TargetInfo, find_litellm, run_http
from ._inprocess import measure_in_process
from ._procs import pin, plan_placement
from ._profile import find_py_spy
from ._report import Report, fill_added, goals, markdown, plot, to_json
from ._wrk import find_wrk

__all__ = ["DEFAULT_OUT", "main"]

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "out"
PY_SPY_MISSING = "--profile: skipped, py-spy is not installed (pip install py-spy)"
LITELLM_MISSING = (
    "--compare litellm: skipped, LiteLLM is not installed "
    "(install it with: pip install 'llm-proxy[compare]')"
)


def _numbers(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list") from None
    if not values or any(value <= 0 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive numbers")
    return values


def _integers(text: str) -> list[int]:
    values = _numbers(text)
    if any(value != int(value) for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers")
    return [int(value) for value in values]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-proxy bench",
        description=(
            "Measure the proxy against the fake LLM upstream: in process, then over HTTP "
            "(direct to the upstream, through a bare hypercorn + httpx relay and the engine's "
            "bare http11 relay, through "
            "llm-proxy with a minimal and with the recommended stack), closed loops for "
            "throughput and open loops at fixed rates for latency. Writes results.md, "
            "results.json and results.png to --out."
        ),
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="the output directory (default: benchmarks/out)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a small run of a few seconds (a smoke test)"
    )
    parser.add_argument(
        "--compare",
        action="append",
        choices=["litellm"],
        default=[],
        help="also measure LiteLLM's proxy under the same load (the `compare` extra)",
    )
    parser.add_argument(
        "--generator",
        choices=["auto", "wrk", "builtin"],
        default="auto",
        help="closed-loop load generator (auto: wrk when installed); open loops are built-in",
    )
    parser.add_argument(
        "--targets",
        default="direct,relay,engine,minimal,recommended,redis",
        help=(
            "servers to measure, comma-separated, from: direct, relay (hypercorn + httpx), "
            "engine (the http11 relay), minimal, recommended, redis (the recommended "
            "stack on a Redis store the harness starts)"
        ),
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes of each llm-proxy target (serve --workers; default: 1)",
    )
    parser.add_argument(
        "--concurrency",
        type=_integers,
        help="closed-loop connections, comma-separated (default: 1,8,32; --quick: 2)",
    )
    parser.add_argument(
        "--rates",
        type=_numbers,
        help="open-loop req/s for whole answers (default: 50,100,200,400; --quick: 20)",
    )
    parser.add_argument(
        "--stream-rates",
        type=_numbers,
        help="open-loop req/s for streams (default: 25,50,100,200; --quick: 10)",
    )
    parser.add_argument(
        "--chunks", type=int, default=50, help="content chunks per stream (default: 50)"
    )
    parser.add_argument(
        "--duration", type=float, help="seconds per step (default: 3; --quick: 0.5)"
    )
    parser.add_argument(
        "--no-in-process", action="store_true", help="skip the in-process measurements"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after their steps, sample the relay and the proxies under load with py-spy",
    )
    return parser


def _machine() -> dict[str, str]:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "CPUs": str(len(os.sched_getaffinity(0))),
        "Python": platform.python_version(),
        "kernel": platform.release(),
        "load average at start": load,
    }


def _wrk_version(wrk: str) -> str:
    result = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    first = (result.stdout or result.stderr).splitlines()
    return first[0].split(" Copyright")[0] if first else "wrk"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the harness; returns the exit status (0, or 2 for bad arguments)."""
    parser = _parser()
    args = parser.parse_args(argv)
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    unknown = [t for t in targets if t not in LABELS or t == "litellm"]
    if unknown or not targets:
        parser.error(f"--targets: unknown {', '.join(unknown) or '(none)'}")
    quick = args.quick
    if args.workers < 1:
        parser.error("--workers: give a whole number of at least 1")
    notes: list[str] = []
    wrk = find_wrk() if args.generator != "builtin" else None
    if args.generator == "wrk" and wrk is None:
        parser.error("--generator wrk: wrk is not installed (apt-get install wrk)")
    if wrk is None:
        closed = "built-in trio generator" + (
            " (wrk is not installed)" if args.generator == "auto" else ""
        )
    else:
        closed = f"{_wrk_version(wrk)}, one thread"
    generators = {
        "closed loops": closed,
        "open loops and streaming TTFT": "built-in trio generator (raw sockets)",
    }
    litellm = None
    if "litellm" in args.compare:
        litellm = find_litellm()
        if litellm is None:
            print(LITELLM_MISSING, file=sys.stderr, flush=True)
            notes.append(LITELLM_MISSING)
        else:
            targets += ("litellm",)
    py_spy = None
    if args.profile:
        py_spy = find_py_spy()
        if py_spy is None:
            print(PY_SPY_MISSING, file=sys.stderr, flush=True)
            notes.append(PY_SPY_MISSING)
    plan = Plan(
        targets=targets,
        concurrency=tuple(args.concurrency or ((2,) if quick else (1, 8, 32))),
        rates=tuple(args.rates or ((20.0,) if quick else (50.0, 100.0, 200.0, 400.0))),
        stream_rates=tuple(args.stream_rates or ((10.0,) if quick else (25.0, 50.0, 100.0, 200.0))),
        chunks=args.chunks,
        duration=args.duration or (0.5 if quick else 3.0),
        max_requests=50 if quick else 1_000_000,
        use_wrk=wrk,
        warmup=0.2 if quick else 1.0,
        litellm=litellm,
        py_spy=py_spy,
        profile_seconds=2 if quick else 5,
        settle=0.05 if quick else 0.5,
        workers=args.workers,
    )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    original = os.sched_getaffinity(0)
    placement = plan_placement(sorted(original))
    progress = Progress()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = _machine()
    progress.say(f"placement: {placement.describe()}")
    for kind, name in generators.items():
        progress.say(f"{kind}: {name}")
    try:
        in_process = []
        if not args.no_in_process:
            # Nothing else of ours runs yet: the server's CPU is free for the pipeline alone.
            pin(placement.target)
            requests, repeats = (30, 1) if quick else (1000, 5)
            in_process = measure_in_process(requests, repeats, plan.chunks)
            for row in in_process:
                text = f"{row.stack:<32} {row.mode:<6} {row.us_per_request:8.1f} us/request"
                progress.say(f"in process: {text}")
        pin(placement.generator)
        rows, infos, profiles = trio.run(run_http, plan, placement, out, progress)
    finally:
        os.sched_setaffinity(0, original)
    if litellm is None and "litellm" in args.compare:
        infos.append(TargetInfo(key="litellm", label=LABELS["litellm"], skipped=LITELLM_MISSING))
    fill_added(rows)
    report = Report(
        command=shlex.join(["llm-proxy", "bench", *(argv if argv is not None else sys.argv[1:])]),
        started=started,
        seconds=time.monotonic() - progress.started,
        machine=machine,
        placement=placement.describe(),
        generators=generators,
        settings={
            "chunks per stream": plan.chunks,
            "seconds per step": plan.duration,
            "concurrency": ",".join(map(str, plan.concurrency)),
            "whole rates": ",".join(f"{r:g}" for r in plan.rates),
            "stream rates": ",".join(f"{r:g}" for r in plan.stream_rates),
            "workers per proxy": plan.workers,
        },
        in_process=in_process,
        targets=infos,
        rows=rows,
        goals=goals(rows),
        notes=notes,
        profiles=profiles,
    )
    (out / "results.json").write_bytes(to_json(report))
    (out / "results.md").write_text(markdown(report))
    progress.say(plot(report, out / "results.png"))
    progress.say(f"results: {out / 'results.md'}, {out / 'results.json'}")
    print(markdown(report))
    return 0
