"""`llm-proxy bench` end to end: a small real run, and the comparison skipped without LiteLLM."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from benchmarks._bench import _cli
from benchmarks._bench._report import Report
from llm_proxy.cli import main as proxy_main

ROOT = Path(__file__).resolve().parents[2]
BENCH = [sys.executable, "-m", "llm_proxy.cli", "bench"]


def test_a_quick_run_measures_every_server_and_writes_every_output(tmp_path: Path) -> None:
    out = tmp_path / "out"

    result = subprocess.run(
        [*BENCH, "--quick", "--generator", "builtin", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    report = msgspec.json.decode((out / "results.json").read_bytes(), type=Report)
    steps = {(r.target, r.mode, r.loop) for r in report.rows}
    targets: tuple[str, ...] = ("direct", "relay", "engine", "minimal", "recommended")
    if shutil.which("redis-server"):
        targets += ("redis",)  # the recommended stack on a Redis store the harness starts
    assert steps == {
        (t, m, loop) for t in targets for m in ("whole", "stream") for loop in ("closed", "open")
    }
    for row in report.rows:
        assert row.requests > 0, row
        assert row.errors == row.incomplete == 0, row
        assert row.generator == "builtin"
        assert row.p50_ms is not None
        assert row.server_cpu_us is not None
        if row.mode == "stream":
            assert row.ttft_p50_ms is not None
            assert row.ttft_p50_ms <= row.p50_ms
    assert [t.key for t in report.targets] == list(targets)
    assert all(t.peak_rss_mb for t in report.targets)
    assert {r.stack for r in report.in_process} >= {"recommended stack, cache hit"}
    assert report.goals
    text = (out / "results.md").read_text()
    assert "### Open loop: latency at fixed request rates" in text
    assert "closed loops: built-in trio generator" in text
    assert "Placement: " in text
    assert (out / "results.png").exists() == (importlib.util.find_spec("matplotlib") is not None)
    # One progress line per step, each with the time since the start.
    progress = [line for line in result.stderr.splitlines() if line.startswith("[")]
    minimal = [line for line in progress if " s] llm-proxy, minimal stack " in line]
    assert "ready in" in minimal[0]
    assert len(minimal) == 5
    assert all("req/s" in line for line in minimal[1:])
    assert result.stdout == text + "\n"


def test_workers_serve_each_proxy_with_that_many_processes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [*BENCH, "--quick", "--generator", "builtin", "--no-in-process"]
    command += ["--targets", "direct,minimal", "--workers", "2", "--out", str(out)]

    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )

    assert result.returncode == 0, result.stderr
    report = msgspec.json.decode((out / "results.json").read_bytes(), type=Report)
    assert {r.target for r in report.rows} == {"direct", "minimal"}
    assert all(r.requests > 0 and r.errors == 0 for r in report.rows)
    assert report.settings["workers per proxy"] == 2
    # The parent and its two workers are sampled together.
    assert all(r.server_cpu_us is not None for r in report.rows if r.target == "minimal")


def test_compare_litellm_without_litellm_is_skipped_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_cli, "find_litellm", lambda: None)
    affinity = os.sched_getaffinity(0)
    argv = ["--quick", "--generator", "builtin", "--no-in-process", "--targets", "direct"]

    status = _cli.main([*argv, "--compare", "litellm", "--out", str(tmp_path)])

    assert status == 0
    assert os.sched_getaffinity(0) == affinity
    assert "--compare litellm: skipped, LiteLLM is not installed" in capsys.readouterr().err
    report = msgspec.json.decode((tmp_path / "results.json").read_bytes(), type=Report)
    assert {r.target for r in report.rows} == {"direct"}
    litellm = report.targets[-1]
    assert litellm.key == "litellm"
    assert litellm.skipped is not None
    assert "pip install 'llm-proxy[compare]'" in litellm.skipped
    assert "Note: --compare litellm: skipped" in (tmp_path / "results.md").read_text()


def test_the_proxy_command_hands_bench_its_own_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        proxy_main(["bench", "--help"])

    assert exit_info.value.code == 0
    assert "usage: llm-proxy bench" in capsys.readouterr().out


def test_other_commands_still_refuse_unknown_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        proxy_main(["check-config", "x.toml", "--bogus"])

    assert exit_info.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_bad_harness_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _cli.main(["--targets", "direct,nowhere"])

    assert exit_info.value.code == 2
    assert "--targets: unknown nowhere" in capsys.readouterr().err
