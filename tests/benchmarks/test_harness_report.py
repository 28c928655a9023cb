"""Where the harness runs things, and how it judges and reports a run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import msgspec
import pytest

from benchmarks._bench._harness import Row, TargetInfo
from benchmarks._bench._procs import plan_placement
from benchmarks._bench._profile import Profile
from benchmarks._bench._report import (
    Report,
    fill_added,
    goals,
    markdown,
    moderate_rate,
    plot,
    throughput,
    to_json,
)


def test_two_cpus_give_the_server_its_own() -> None:
    placement = plan_placement([0, 1])

    assert placement.target == {1}
    assert placement.upstream == placement.generator == {0}
    assert placement.describe() == (
        "server under test on CPU 1; fake upstream and load generator share CPU 0 (only 2 CPUs)"
    )


def test_more_cpus_give_everyone_their_own() -> None:
    placement = plan_placement([3, 0, 5, 7])

    assert placement.generator == {0}
    assert placement.target == {3}
    assert placement.upstream == {5}
    assert "load generator on CPU 0" in placement.describe()


def test_one_cpu_pins_nothing_and_says_so() -> None:
    placement = plan_placement([0])

    assert placement.target == placement.upstream == placement.generator == frozenset()
    assert "not pinned" in placement.describe()


def row(
    target: str, mode: str, *, rate: float | None = None, conc: int | None = None, **values: float
) -> Row:
    return Row(
        target=target,
        mode=mode,
        loop="open" if rate is not None else "closed",
        concurrency=conc,
        offered_rps=rate,
        generator="builtin",
        requests=100,
        errors=0,
        incomplete=0,
        seconds=1.0,
        rps=values.get("rps", rate or 100.0),
        p50_ms=values.get("p50", 1.0),
        p90_ms=values.get("p90", 2.0),
        p99_ms=values.get("p99", 3.0),
        max_ms=4.0,
        ttft_p50_ms=values.get("ttft"),
        ttft_p99_ms=values["ttft"] * 2 if "ttft" in values else None,
        max_lag_ms=0.0,
        server_cpu_us=values.get("cpu", 900.0),
        upstream_cpu_us=None,
        generator_cpu_us=None,
    )


ROWS = [
    row("direct", "whole", conc=8, rps=3000),
    row("relay", "whole", conc=1, rps=600, cpu=1000),
    row("relay", "whole", conc=8, rps=1000, cpu=950),
    row("minimal", "whole", conc=1, rps=500, cpu=1300),
    row("minimal", "whole", conc=8, rps=760, cpu=1250),
    row("litellm", "whole", conc=8, rps=100, cpu=9300),
    row("direct", "whole", rate=100.0, p50=1.0, p99=2.0),
    row("direct", "whole", rate=300.0, p50=1.2, p99=3.0),
    row("direct", "whole", rate=500.0, p50=1.5, p99=4.0),
    row("minimal", "whole", rate=100.0, p50=1.5, p99=3.5),
    row("minimal", "whole", rate=300.0, p50=2.5, p99=9.0),
    row("minimal", "whole", rate=500.0, p50=30.0, p99=90.0),
    row("minimal", "stream", conc=8, rps=150, cpu=5000),
    row("direct", "stream", rate=50.0, p50=5.0, ttft=1.0),
    row("minimal", "stream", rate=50.0, p50=12.0, ttft=1.6),
]


def fresh_rows() -> list[Row]:
    return [msgspec.structs.replace(r) for r in ROWS]


def test_added_latency_is_over_the_direct_run_of_the_same_step() -> None:
    rows = fresh_rows()

    fill_added(rows)

    minimal = {r.offered_rps: r for r in rows if r.target == "minimal" and r.loop == "open"}
    assert minimal[100.0].added_p50_ms == pytest.approx(0.5)
    assert minimal[100.0].added_p99_ms == pytest.approx(1.5)
    assert minimal[500.0].added_p50_ms == pytest.approx(28.5)
    # No direct run at concurrency 1: nothing to compare with.
    assert next(r for r in rows if r.target == "relay" and r.concurrency == 1).added_p50_ms is None
    assert all(r.added_p50_ms is None for r in rows if r.target == "direct")


def test_throughput_is_the_best_over_all_concurrency_levels() -> None:
    relay = throughput(ROWS, "relay", "whole")

    assert relay is not None
    assert relay.measured == 1000
    assert relay.cpu_us == 950  # the lowest of its steps
    assert relay.capacity == pytest.approx(1e6 / 950)
    assert throughput(ROWS, "relay", "stream") is None


def test_a_moderate_load_is_at_most_half_the_proxys_capacity() -> None:
    assert moderate_rate(ROWS, "whole") == 300.0  # 1 s / 1250 us = 800 req/s; half is 400
    assert moderate_rate(ROWS, "stream") == 50.0  # 1 s / 5000 us = 200 req/s; half is 100
    assert moderate_rate([r for r in ROWS if r.mode == "whole"], "stream") is None


def test_goals_are_judged_on_the_run() -> None:
    rows = fresh_rows()
    fill_added(rows)

    judged = {g.goal: g for g in goals(rows)}

    relay = judged["llm-proxy, minimal stack, whole: >= 70 % of the bare relay's requests/s"]
    assert relay.measured == (
        "capacity 800 / 1053 req/s = 76% (CPU per request 1250 vs 950 us); "
        "measured 760 / 1000 req/s = 76%"
    )
    assert relay.met
    litellm = judged["llm-proxy, minimal stack, whole: >= 5x LiteLLM's requests/s"]
    assert litellm.measured == (
        "capacity 800 / 108 req/s = 7.4x (CPU per request 1250 vs 9300 us); "
        "measured 760 / 100 req/s = 7.6x"
    )
    assert litellm.met
    latency = judged[
        "llm-proxy, minimal stack, whole: adds < 1 ms p50 latency at a moderate load (300 req/s)"
    ]
    assert (latency.measured, latency.met) == ("+1.30 ms p50, +6.00 ms p99", False)
    # A stream is judged on its first token, not on its end (7 ms later than direct here).
    ttft = judged[
        "llm-proxy, minimal stack, stream: adds < 1 ms p50 TTFT at a moderate load (50 req/s)"
    ]
    assert (ttft.measured, ttft.met) == ("+0.60 ms p50, +1.20 ms p99", True)


def test_throughput_goals_are_judged_on_capacity_when_the_cpu_was_shared() -> None:
    # Something else ran on the proxy's CPU: it reached half its throughput, at its usual
    # CPU cost per request.
    rows = [msgspec.structs.replace(r, rps=r.rps / 2) if r.target == "minimal" else r for r in ROWS]

    judged = {g.goal: g for g in goals(rows)}

    relay = judged["llm-proxy, minimal stack, whole: >= 70 % of the bare relay's requests/s"]
    assert relay.measured.endswith("measured 380 / 1000 req/s = 38%")
    assert relay.met


def test_without_cpu_figures_throughput_goals_use_what_was_measured() -> None:
    rows = [msgspec.structs.replace(r, server_cpu_us=None) for r in ROWS]

    judged = {g.goal: g for g in goals(rows)}

    relay = judged["llm-proxy, minimal stack, whole: >= 70 % of the bare relay's requests/s"]
    assert (relay.measured, relay.met) == ("measured 760 / 1000 req/s = 76%", True)
    assert moderate_rate(rows, "whole") == 300.0  # half of the 760 measured


def test_a_goal_without_its_baseline_is_not_measured() -> None:
    rows = [r for r in fresh_rows() if r.target != "litellm"]

    judged = {g.goal: g for g in goals(rows)}

    litellm = judged["llm-proxy, minimal stack, whole: >= 5x LiteLLM's requests/s"]
    assert (litellm.measured, litellm.met) == ("LiteLLM was not run", None)


def report(rows: list[Row]) -> Report:
    fill_added(rows)
    return Report(
        command="llm-proxy bench --quick",
        started="2026-01-01 00:00 UTC",
        seconds=12.0,
        machine={"CPUs": "2"},
        placement="server under test on CPU 1",
        generators={"closed loops": "wrk"},
        settings={"chunks per stream": 50},
        in_process=[],
        targets=[TargetInfo(key="litellm", label="LiteLLM proxy", skipped="not installed")],
        rows=rows,
        goals=goals(rows),
        notes=["a note"],
        profiles=[
            Profile(
                "llm-proxy, minimal stack, stream",
                200,
                [("trio", 0.5), ("h11", 0.2)],
                [("send_all (trio)", 0.3)],
                "profile-minimal-stream.txt",
            )
        ],
    )


def test_the_markdown_has_every_table_and_verdict() -> None:
    text = markdown(report(fresh_rows()))

    assert "Placement: server under test on CPU 1." in text
    assert "Note: a note" in text
    assert "| capacity 800 / 1053 req/s = 76% (CPU per request 1250 vs 950 us); " in text
    assert "| llm-proxy, minimal stack | whole | 8 | builtin | 760 | 1.00 | 2.00 | 3.00 " in text
    assert "| 1250 | 800 | 0 |" in text
    assert "| +1.30 ms p50, +6.00 ms p99 | **not met** |" in text
    assert "### Closed loop: maximum throughput" in text
    assert "| llm-proxy, minimal stack | whole | 300 | 300 | 2.50 | 2.00 | 9.00 |" in text
    assert "| LiteLLM proxy |  |  | not installed |" in text
    assert (
        "### Where the time goes: llm-proxy, minimal stack, stream (py-spy, 200 samples, "
        "`profile-minimal-stream.txt`)"
    ) in text
    assert "| trio | 50.0% | send_all (trio) | 30.0% |\n| h11 | 20.0% |  |  |" in text


def test_the_json_holds_the_whole_report() -> None:
    original = report(fresh_rows())

    decoded = msgspec.json.decode(to_json(original), type=Report)

    assert decoded.rows == original.rows
    assert decoded.goals == original.goals


def test_without_matplotlib_the_plot_is_skipped_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)

    message = plot(report(fresh_rows()), tmp_path / "results.png")

    assert message == "no plot: matplotlib is not installed (pip install 'llm-proxy[bench]')"
    assert not (tmp_path / "results.png").exists()


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="no matplotlib")
def test_the_plot_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "results.png"

    assert plot(report(fresh_rows()), path) == f"plot written to {path}"
    assert path.read_bytes().startswith(b"\x89PNG")
