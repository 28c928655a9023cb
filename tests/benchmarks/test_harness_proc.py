"""Reading a process's CPU time and peak memory from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from benchmarks._bench._proc import cpu_ticks, descendants, parent_pid, sample, status_kib

# /proc/PID/stat of a process whose name holds a space and a parenthesis; fields 14-17
# (utime, stime, cutime, cstime) are 1500, 250, 30, 7.
STAT = (
    "4242 (my (odd) name) S 4200 4242 4200 0 -1 4194560 51234 0 12 0 1500 250 30 7 20 0 3 0 "
    "123456 987654321 12345 18446744073709551615 1 1 0 0 0 0 0 16781312 16386 0 0 0 17 1 0 0"
)

STATUS = """\
Name:\tpython
Umask:\t0022
State:\tS (sleeping)
VmPeak:\t  412345 kB
VmHWM:\t   98765 kB
VmRSS:\t   87654 kB
Threads:\t3
"""


def test_cpu_ticks_skip_a_name_with_spaces_and_parentheses() -> None:
    assert cpu_ticks(STAT) == 1500 + 250 + 30 + 7
    assert cpu_ticks(STAT, children=False) == 1500 + 250


def test_parent_pid() -> None:
    assert parent_pid(STAT) == 4200


def test_status_fields_in_kib() -> None:
    assert status_kib(STATUS, "VmHWM") == 98765
    assert status_kib(STATUS, "VmRSS") == 87654
    assert status_kib(STATUS, "VmSwap") is None


def test_a_process_that_works_shows_cpu_time_and_memory() -> None:
    before = sample(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass

    after = sample(os.getpid())

    assert after.cpu_seconds >= before.cpu_seconds + 0.04
    assert after.peak_rss_kib > 1000


def test_a_child_counts_as_a_descendant() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in descendants(os.getpid())
        assert sample(os.getpid()).peak_rss_kib > sample(child.pid).peak_rss_kib
    finally:
        child.kill()
        child.wait()
    assert child.pid not in descendants(os.getpid())


def test_a_process_that_is_gone_is_an_error() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()

    with pytest.raises(FileNotFoundError, match=str(child.pid)):
        sample(child.pid)
