"""The run's results as one JSON document, a Markdown report and a plot.

Besides the raw rows, the report compares: each server's latency with the direct run of
the same step (the latency the server adds), and the proxy with the issue's performance
goals (the bare relay's throughput, LiteLLM's, and the added median latency at a
moderate load).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import msgspec

from ._harness import LABELS, Row, TargetInfo
from ._inprocess import InProcessRow
from ._profile import Profile

__all__ = [
    "Goal",
    "Report",
    "Throughput",
    "fill_added",
    "goals",
    "markdown",
    "moderate_rate",
    "plot",
    "throughput",
    "to_json",
]

PROXIES = ("minimal", "recommended", "redis")
SHARES = (
    ("recommended", "minimal", 0.6, "issue 13"),
    ("redis", "recommended", 0.7, "issue 13"),
)
"""(ours, baseline, least share of its capacity, the issue that set it)."""


class Goal(msgspec.Struct, frozen=True):
    """One performance goal and where the run stands.

    Attributes:
      goal: what is aimed at.
      measured: the numbers behind the verdict.
      met: True or False; None when the run lacks what it needs (a server was not run).
    """

    goal: str
    measured: str
    met: bool | None


class Report(msgspec.Struct, kw_only=True):
    """Everything one run of the harness measured, and how."""

    command: str
    started: str
    seconds: float
    machine: dict[str, str]
    placement: str
    generators: dict[str, str]
    settings: dict[str, object]
    in_process: list[InProcessRow]
    targets: list[TargetInfo]
    rows: list[Row]
    goals: list[Goal]
    notes: list[str]
    profiles: list[Profile] = msgspec.field(default_factory=list)


def _same_step(row: Row, other: Row) -> bool:
    return (row.mode, row.loop, row.concurrency, row.offered_rps) == (
        other.mode,
        other.loop,
        other.concurrency,
        other.offered_rps,
    )


def fill_added(rows: Sequence[Row]) -> None:
    """Set each server's added latency and TTFT (p50, p99) over the direct run of the same step."""
    direct = [row for row in rows if row.target == "direct"]
    for row in rows:
        if row.target == "direct":
            continue
        base = next((d for d in direct if _same_step(row, d)), None)
        if base is None:
            continue
        if row.p50_ms is not None and base.p50_ms is not None:
            row.added_p50_ms = row.p50_ms - base.p50_ms
        if row.p99_ms is not None and base.p99_ms is not None:
            row.added_p99_ms = row.p99_ms - base.p99_ms
        if row.ttft_p50_ms is not None and base.ttft_p50_ms is not None:
            row.added_ttft_p50_ms = row.ttft_p50_ms - base.ttft_p50_ms
        if row.ttft_p99_ms is not None and base.ttft_p99_ms is not None:
            row.added_ttft_p99_ms = row.ttft_p99_ms - base.ttft_p99_ms


class Throughput(NamedTuple):
    """What a server can do in one mode, from its closed-loop steps.

    Attributes:
      measured: the highest requests/s a step reached.
      capacity: requests/s one core would sustain at the lowest CPU per request of any
        step (1 s / CPU per request); None without CPU figures. Unlike `measured`, it
        holds when something else shares the server's CPU for part of a run.
      cpu_us: that lowest CPU per request.
    """

    measured: float
    capacity: float | None
    cpu_us: float | None


def throughput(rows: Iterable[Row], target: str, mode: str) -> Throughput | None:
    """The closed-loop throughput of `target` in `mode`, over all concurrency levels."""
    closed = [r for r in rows if r.target == target and r.mode == mode and r.loop == "closed"]
    if not closed:
        return None
    costs = [r.server_cpu_us for r in closed if r.server_cpu_us]
    cpu = min(costs) if costs else None
    return Throughput(max(r.rps for r in closed), 1e6 / cpu if cpu else None, cpu)


def _compare(ours: Throughput, theirs: Throughput, *, share: bool) -> tuple[float, str]:
    """The ratio the verdict uses (capacity when both have it), and how it was reached."""

    def ratio(a: float, b: float) -> str:
        return f"{a:.0f} / {b:.0f} req/s = " + (f"{a / b:.0%}" if share else f"{a / b:.1f}x")

    measured = ratio(ours.measured, theirs.measured)
    if ours.capacity and theirs.capacity and ours.cpu_us and theirs.cpu_us:
        text = f"capacity {ratio(ours.capacity, theirs.capacity)} "
        text += f"(CPU per request {ours.cpu_us:.0f} vs {theirs.cpu_us:.0f} us); "
        return ours.capacity / theirs.capacity, text + f"measured {measured}"
    return ours.measured / theirs.measured, f"measured {measured}"


def moderate_rate(rows: Sequence[Row], mode: str) -> float | None:
    """The open-loop rate the added-latency goal is judged at.

    The highest offered rate at most half the minimal proxy's capacity (or, without CPU
    figures, its best measured throughput): a server at half its capacity is moderately
    loaded. The lowest rate if none is.
    """
    offered = sorted(
        {r.offered_rps for r in rows if r.loop == "open" and r.mode == mode and r.offered_rps}
    )
    if not offered:
        return None
    found = throughput(rows, "minimal", mode)
    if found is None:
        return offered[0]
    limit = (found.capacity or found.measured) / 2
    moderate = [rate for rate in offered if rate <= limit]
    return moderate[-1] if moderate else offered[0]


def goals(rows: Sequence[Row]) -> list[Goal]:
    """The issue's performance goals, judged on this run.

    Throughput goals compare capacities (1 s / CPU per request) when the run has CPU
    figures, and say what the steps measured beside them.
    """
    found: list[Goal] = []
    for mode in ("whole", "stream"):
        relay = throughput(rows, "relay", mode)
        litellm = throughput(rows, "litellm", mode)
        for key in PROXIES:
            ours = throughput(rows, key, mode)
            if ours is None:
                continue
            name = f"{LABELS[key]}, {mode}"
            if relay is not None and relay.measured:
                share, text = _compare(ours, relay, share=True)
                found.append(
                    Goal(f"{name}: >= 70 % of the bare relay's requests/s", text, share >= 0.7)
                )
            goal = f"{name}: >= 5x LiteLLM's requests/s"
            if litellm is not None and litellm.measured:
                times, text = _compare(ours, litellm, share=False)
                found.append(Goal(goal, text, times >= 5))
            else:
                found.append(Goal(goal, "LiteLLM was not run", None))
        for key, base, least, issue in SHARES:
            ours, theirs = throughput(rows, key, mode), throughput(rows, base, mode)
            if ours is None or theirs is None or not theirs.measured:
                continue
            share, text = _compare(ours, theirs, share=True)
            found.append(
                Goal(
                    f"{LABELS[key]}, {mode}: >= {least:.0%} of {LABELS[base]}'s requests/s "
                    f"({issue})",
                    text,
                    share >= least,
                )
            )
        if mode == "stream":
            ours, theirs = throughput(rows, "recommended", mode), throughput(rows, "minimal", mode)
            if ours is not None and theirs is not None and ours.cpu_us and theirs.cpu_us:
                found.append(
                    Goal(
                        f"{LABELS['recommended']}, stream: CPU per stream <= 2x the minimal "
                        "stack's (issue 13)",
                        f"{ours.cpu_us:.0f} / {theirs.cpu_us:.0f} us = "
                        f"{ours.cpu_us / theirs.cpu_us:.2f}x",
                        ours.cpu_us <= 2 * theirs.cpu_us,
                    )
                )
        rate = moderate_rate(rows, mode)
        for key in PROXIES:
            row = next(
                (
                    r
                    for r in rows
                    if r.target == key and r.mode == mode and r.loop == "open"
                    if r.offered_rps == rate
                ),
                None,
            )
            if row is None:
                continue
            # A stream's end waits for every chunk, which the fake sends at once: what a
            # user waits on is its first token.
            if mode == "stream":
                added, added_p99, what = row.added_ttft_p50_ms, row.added_ttft_p99_ms, "TTFT"
            else:
                added, added_p99, what = row.added_p50_ms, row.added_p99_ms, "latency"
            if added is None:
                continue
            found.append(
                Goal(
                    f"{LABELS[key]}, {mode}: adds < 1 ms p50 {what} at a moderate load "
                    f"({rate:g} req/s)",
                    f"+{added:.2f} ms p50, +{added_p99 or 0:.2f} ms p99",
                    added < 1.0,
                )
            )
    return found


def to_json(report: Report) -> bytes:
    """The report as indented JSON."""
    return msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n"


def _f(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}"


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not measured"}[met]


def markdown(report: Report) -> str:
    """The report for people: settings, goals, and one table per kind of measurement."""
    lines = [
        f"Command: `{report.command}` ({report.started}, {report.seconds:.0f} s)",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in report.machine.items()) + ".",
        f"Placement: {report.placement}.",
        "Load generators: "
        + "; ".join(f"{kind}: {name}" for kind, name in report.generators.items())
        + ".",
        "Settings: " + ", ".join(f"{k} {v}" for k, v in report.settings.items()) + ".",
    ]
    for note in report.notes:
        lines += ["", f"Note: {note}"]
    if report.goals:
        lines += [
            "",
            "### Goals",
            "",
            "Throughput is judged on *capacity*, the requests/s one core sustains at a "
            "server's lowest CPU per request (1 s / CPU per request): other work on a shared "
            "machine lowers the requests/s a step reaches, not the CPU a request costs.",
            "",
            "| goal | measured | verdict |",
            "|---|---|---|",
        ]
        lines += [f"| {g.goal} | {g.measured} | {_verdict(g.met)} |" for g in report.goals]
    if report.in_process:
        lines += [
            "",
            "### In process (mock provider, zero delays)",
            "",
            "| stack | mode | chunks/request | us/request | added us/request | added us/chunk |",
            "|---|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r.stack} | {r.mode} | {r.chunks} | {r.us_per_request:.1f} "
            f"| {r.added_us_per_request:.1f} | {_f(r.added_us_per_chunk, 3)} |"
            for r in report.in_process
        ]
    closed = [r for r in report.rows if r.loop == "closed"]
    if closed:
        lines += [
            "",
            "### Closed loop: maximum throughput",
            "",
            "| server | mode | concurrency | generator | req/s | p50 ms | p90 ms | p99 ms "
            "| added p50 ms | server CPU us/req | capacity req/s | errors |",
            "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {LABELS[r.target]} | {r.mode} | {r.concurrency} | {r.generator} | {r.rps:.0f} "
            f"| {_f(r.p50_ms)} | {_f(r.p90_ms)} | {_f(r.p99_ms)} | {_signed(r.added_p50_ms)} "
            f"| {_f(r.server_cpu_us, 0)} "
            f"| {_f(1e6 / r.server_cpu_us if r.server_cpu_us else None, 0)} "
            f"| {r.errors + r.incomplete} |"
            for r in closed
        ]
    opened = [r for r in report.rows if r.loop == "open"]
    if opened:
        lines += [
            "",
            "### Open loop: latency at fixed request rates (from the scheduled send time)",
            "",
            "| server | mode | offered req/s | done req/s | p50 ms | p90 ms | p99 ms "
            "| TTFT p50 ms | TTFT p99 ms | added p50 ms | added p99 ms | added TTFT p50 ms "
            "| server CPU us/req | errors | incomplete |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {LABELS[r.target]} | {r.mode} | {r.offered_rps:g} | {r.rps:.0f} "
            f"| {_f(r.p50_ms)} | {_f(r.p90_ms)} | {_f(r.p99_ms)} | {_f(r.ttft_p50_ms)} "
            f"| {_f(r.ttft_p99_ms)} | {_signed(r.added_p50_ms)} | {_signed(r.added_p99_ms)} "
            f"| {_signed(r.added_ttft_p50_ms)} | {_f(r.server_cpu_us, 0)} | {r.errors} "
            f"| {r.incomplete} |"
            for r in opened
        ]
    if report.targets:
        lines += [
            "",
            "### Servers",
            "",
            "| server | start-up s | peak RSS MB | note |",
            "|---|---:|---:|---|",
        ]
        lines += [
            f"| {t.label} | {_f(t.startup_seconds, 1)} | {_f(t.peak_rss_mb, 0)} "
            f"| {t.skipped or ''} |"
            for t in report.targets
        ]
    for profile in report.profiles:
        lines += _profile_lines(profile)
    return "\n".join(lines) + "\n"


def _profile_lines(profile: Profile) -> list[str]:
    lines = [
        "",
        f"### Where the time goes: {profile.label} (py-spy, {profile.samples} samples, "
        f"`{profile.raw}`)",
        "",
        "| own time by package | share | own time by function | share |",
        "|---|---:|---|---:|",
    ]
    packages, functions = profile.by_package, profile.by_function
    for i in range(max(len(packages), len(functions))):
        package, p_share = packages[i] if i < len(packages) else ("", None)
        function, f_share = functions[i] if i < len(functions) else ("", None)
        p_text = f"{p_share:.1%}" if p_share is not None else ""
        f_text = f"{f_share:.1%}" if f_share is not None else ""
        lines.append(f"| {package} | {p_text} | {function} | {f_text} |")
    return lines


_STYLE = {
    "direct": "tab:gray",
    "relay": "tab:blue",
    "engine": "tab:purple",
    "minimal": "tab:green",
    "recommended": "tab:olive",
    "redis": "tab:brown",
    "litellm": "tab:red",
}


def plot(report: Report, path: Path) -> str:
    """Draw open-loop latency (p50, p99) against offered load, per mode; returns a message.

    Without matplotlib (the `bench` extra) nothing is drawn and the message says so.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import ScalarFormatter
    except ImportError:
        return "no plot: matplotlib is not installed (pip install 'llm-proxy[bench]')"
    opened = [r for r in report.rows if r.loop == "open" and r.p50_ms is not None]
    if not opened:
        return "no plot: the run has no open-loop steps"
    modes = [m for m in ("whole", "stream") if any(r.mode == m for r in opened)]
    figure, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 5.2), squeeze=False)
    for axis, mode in zip(axes[0], modes, strict=True):
        for key, color in _STYLE.items():
            rows = sorted(
                (r for r in opened if r.target == key and r.mode == mode),
                key=lambda r: r.offered_rps or 0,
            )
            if not rows:
                continue
            rates = [r.offered_rps for r in rows]
            axis.plot(rates, [r.p50_ms for r in rows], "o-", color=color, label=LABELS[key])
            axis.plot(rates, [r.p99_ms for r in rows], "s--", color=color, alpha=0.5)
        axis.set_yscale("log")
        axis.yaxis.set_major_formatter(ScalarFormatter())
        axis.set_xlabel("offered load (requests/s, open loop)")
        axis.set_ylabel("latency from the scheduled send (ms)")
        title = "whole answers" if mode == "whole" else "50-chunk streams, to the last chunk"
        axis.set_title(f"{title}: p50 (solid), p99 (dashed)", fontsize="medium")
        axis.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize="small")
    figure.suptitle(f"llm-proxy bench, {report.started}", fontsize="small")
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return f"plot written to {path}"
