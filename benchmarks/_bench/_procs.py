"""The processes of a benchmark: where each runs (CPU placement), starting and stopping them.

Every server runs in its own process and session, with its output in a log file under
the run's output directory; it is ready when that output matches a pattern (its "ready"
line) or a health URL answers, and it is stopped, with whatever it started, when the run
leaves its block.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import httpx
import msgspec
import trio

__all__ = ["Child", "Placement", "StartError", "find_tool", "pin", "plan_placement", "running"]

_POLL = 0.05


class StartError(Exception):
    """A server exited, or did not say it was ready in time."""


class Placement(msgspec.Struct, frozen=True):
    """Which CPUs each role may run on; empty sets mean "not pinned".

    Attributes:
      target: the server under test: the proxy, the bare relay or LiteLLM.
      upstream: the fake upstream (also when it is measured directly, so that direct and
        proxied runs see it on the same CPU).
      generator: the load generator (wrk and the harness itself).
    """

    target: frozenset[int]
    upstream: frozenset[int]
    generator: frozenset[int]

    def describe(self) -> str:
        """One sentence for the report."""
        if not self.target:
            return "not pinned: this machine offers one CPU, so every process shares it"

        def cpus(which: frozenset[int]) -> str:
            return "CPU " + ",".join(str(cpu) for cpu in sorted(which))

        if self.upstream == self.generator:
            return (
                f"server under test on {cpus(self.target)}; fake upstream and load generator "
                f"share {cpus(self.upstream)} (only {len(self.target | self.upstream)} CPUs)"
            )
        return (
            f"server under test on {cpus(self.target)}, fake upstream on "
            f"{cpus(self.upstream)}, load generator on {cpus(self.generator)}"
        )


def plan_placement(available: Sequence[int]) -> Placement:
    """Give the server under test a CPU of its own, and the others theirs where possible.

    With two CPUs the upstream and the load generator share the first; with one, nothing
    is pinned.
    """
    cpus = sorted(available)
    if len(cpus) < 2:
        return Placement(frozenset(), frozenset(), frozenset())
    if len(cpus) == 2:
        shared = frozenset({cpus[0]})
        return Placement(frozenset({cpus[1]}), shared, shared)
    return Placement(frozenset({cpus[1]}), frozenset({cpus[2]}), frozenset({cpus[0]}))


class Child(msgspec.Struct):
    """A running server process.

    Attributes:
      name: how the report names it.
      pid: its process id (also its process group's).
      url: its base URL (`http://127.0.0.1:PORT`).
      startup_seconds: from the start of the process until it was ready.
      log: the file its output goes to.
    """

    name: str
    pid: int
    url: str
    startup_seconds: float
    log: Path


def find_tool(name: str) -> str | None:
    """An executable installed beside this Python (its virtualenv), or on PATH; None if absent."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def pin(cpus: frozenset[int]) -> None:
    """Let the calling process (or a child about to exec) run only on `cpus`; empty: any."""
    if cpus:
        os.sched_setaffinity(0, cpus)


@asynccontextmanager
async def running(
    name: str,
    command: Sequence[str],
    *,
    log: Path,
    ready: str | None = None,
    health: str | None = None,
    cpus: frozenset[int] = frozenset(),
    env: Mapping[str, str] | None = None,
    ready_within: float = 60.0,
) -> AsyncIterator[Child]:
    """Start `command` pinned to `cpus`, wait until it serves, stop it on leaving.

    Args:
      name: how errors and the report name the process.
      command: the program and its arguments.
      log: where its output (stdout and stderr, together) goes.
      ready: a regular expression its output matches once it serves; its first group
        is the server's base URL.
      health: instead of `ready`, a URL that answers 200 once it serves (its origin is
        the base URL).
      cpus: the CPUs it may run on (empty: not pinned).
      env: extra environment variables.
      ready_within: seconds it may take to become ready.

    Raises:
      StartError: it exited, or was not ready within `ready_within` seconds.
    """
    if (ready is None) == (health is None):
        raise ValueError("give exactly one of `ready` and `health`")
    start = trio.current_time()
    with log.open("wb") as output:
        process = await trio.lowlevel.open_process(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            preexec_fn=lambda: pin(cpus),
        )
    url: str | None = None
    try:
        with trio.move_on_after(ready_within):
            while url is None:
                if process.poll() is not None:
                    raise StartError(f"{name} exited with status {process.returncode}; see {log}")
                await trio.sleep(_POLL)
                if ready is not None:
                    url = await _url_in_output(log, ready)
                elif health is not None and await _healthy(health):
                    url = str(httpx.URL(health).copy_with(path="/", query=None)).rstrip("/")
        if url is None:
            raise StartError(f"{name} was not ready after {ready_within:g} s; see {log}")
        yield Child(name, process.pid, url, trio.current_time() - start, log)
    finally:
        with trio.CancelScope(shield=True):
            await _stop(process)


async def _url_in_output(log: Path, ready: str) -> str | None:
    match = re.search(ready, await trio.Path(log).read_text(errors="replace"))
    return match[1] if match else None


async def _healthy(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=_POLL * 20) as client:
            return (await client.get(url)).status_code == 200
    except httpx.HTTPError:
        return False


async def _stop(process: trio.Process) -> None:
    """SIGTERM to the process group, SIGKILL to what is left after 10 s."""
    for signum, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        if process.returncode is not None:
            break
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            break
        with trio.move_on_after(grace):
            await process.wait()
    # Helpers the server started may outlive it in its group; they go too.
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
