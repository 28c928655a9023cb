"""What a process has cost so far, from Linux's /proc: CPU time and peak memory.

A server under test may start helpers of its own (LiteLLM can run workers), so the
figures cover the process and its live descendants; the CPU time of children it has
already waited for is included through the kernel's `cutime`/`cstime`.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

__all__ = [
    "ProcessSample",
    "cpu_ticks",
    "descendants",
    "parent_pid",
    "sample",
    "status_kib",
]

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


def _fields_after_name(stat: str) -> list[str]:
    # The command name (field 2) is in parentheses and may hold spaces and parentheses
    # itself; everything after the last `)` is space-separated, starting with the state.
    return stat.rsplit(")", 1)[1].split()


def cpu_ticks(stat: str, *, children: bool = True) -> int:
    """User plus system CPU time in clock ticks from the text of `/proc/PID/stat`.

    Args:
      stat: the file's text.
      children: add the time of children the process has waited for (`cutime`, `cstime`).
    """
    fields = _fields_after_name(stat)
    # Fields 14-17 of proc(5): utime, stime, cutime, cstime; the state (field 3) is [0].
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks


def parent_pid(stat: str) -> int:
    """The parent's process id from the text of `/proc/PID/stat`."""
    return int(_fields_after_name(stat)[1])


def status_kib(status: str, name: str) -> int | None:
    """A `kB` field of `/proc/PID/status` (`VmHWM`, `VmRSS`), in KiB; None when absent."""
    prefix = name + ":"
    for line in status.splitlines():
        if line.startswith(prefix):
            return int(line[len(prefix) :].split()[0])
    return None


def descendants(pid: int) -> list[int]:
    """The live descendants of a process, found by their parent ids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = parent_pid((entry / "stat").read_text())
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or a kernel thread with an odd name
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class ProcessSample(msgspec.Struct, frozen=True):
    """A process tree's cost so far.

    Attributes:
      cpu_seconds: user plus system CPU time of the process and its descendants.
      peak_rss_kib: the sum of their peak resident set sizes (`VmHWM`).
    """

    cpu_seconds: float
    peak_rss_kib: int


def sample(pid: int) -> ProcessSample:
    """The CPU time and peak memory of a process and its live descendants so far.

    Raises:
      OSError: the process itself is gone.
    """
    ticks = cpu_ticks((_PROC / str(pid) / "stat").read_text())
    peak = status_kib((_PROC / str(pid) / "status").read_text(), "VmHWM") or 0
    for child in descendants(pid):
        try:
            ticks += cpu_ticks((_PROC / str(child) / "stat").read_text())
            peak += status_kib((_PROC / str(child) / "status").read_text(), "VmHWM") or 0
        except OSError:
            continue  # it exited between the listing and the read
    return ProcessSample(ticks / TICKS_PER_SECOND, peak)
