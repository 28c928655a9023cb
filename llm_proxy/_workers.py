"""Several worker processes on one port: `llm-proxy serve --workers N`.

The parent binds and listens on the address once (so port 0 resolves to one port), then
starts N worker processes the way hypercorn's own multi-worker mode does: spawned (a
fresh interpreter each) and handed the listening socket, from which the kernel gives each
new connection to one of them. It does not use hypercorn's `run` itself, which imports the
application by name in every worker: here each worker builds its own stack from the
configuration file, opens its store, and serves with `serve` (its grace period, its
pipeline closed at the end), exactly as a single-process server does.

The parent prints the banner once every worker listens, then only supervises: SIGINT or
SIGTERM is passed on to every worker as SIGTERM (a second one skips their grace period),
SIGHUP is passed on as it is (every worker reloads its configuration),
and a worker that exits on its own stops the others (exit status 1), so a process manager
sees the failure and restarts the whole. Workers run in their own process group, so a
Ctrl-C in the terminal reaches them only through the parent, once; a worker whose parent
died shuts down by itself.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

import trio

from pipeline import ConfigError

from ._config import ProxyConfig, load_config
from ._reload import LiveStack, Loader, reload_config
from ._serve import serve
from ._stack import Stack, build_stack, configure_process_logging, default_config

__all__ = ["run_workers"]

STARTUP_TIMEOUT = 60.0
"""Seconds the workers may take to build their stacks and listen."""
SUPERVISE_INTERVAL = 0.5
"""Seconds between two looks at the workers' exit codes while they serve."""


def reserve(host: str, port: int) -> socket.socket:
    """A socket bound to host:port with SO_REUSEPORT, not listening: it holds the port.

    Each worker then listens on a socket of its own bound to the same port, and the kernel
    spreads new connections evenly over the listening ones. One socket shared by every
    worker would instead hand each connection to whichever worker's `accept` wakes first,
    leaving some idle while one is saturated. The reserving socket never listens, so it
    takes no connections; it keeps port 0's choice and keeps another program off the port.

    Raises:
      OSError: the address is taken or cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def run_workers(
    workers: int,
    file: Path | None,
    source: str,
    address: tuple[str, int],
    announce: Callable[[str], None],
) -> int:
    """Run `workers` worker processes on `address` until a signal or a worker's exit.

    Args:
      workers: how many processes.
      file: the configuration file each worker builds its stack from (None: the
        embedded default).
      source: how messages name the configuration.
      address: the host and port (reserved with `reserve`) each worker listens on with a
        socket of its own.
      announce: called with the base URL once every worker listens.

    Returns:
      the exit status: 0 after a shutdown by signal, 1 if a worker failed.
    """
    context = multiprocessing.get_context("spawn")
    processes: list[BaseProcess] = []
    ready: list[Connection] = []
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGTERM)

    def reload(signum: int, frame: FrameType | None) -> None:
        for process in processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGHUP)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload)
    try:
        for number in range(workers):
            receiver, sender = context.Pipe(duplex=False)
            worker = context.Process(
                target=_worker,
                args=(file, source, address, sender),
                name=f"llm-proxy-worker-{number}",
            )
            worker.start()
            sender.close()
            processes.append(worker)
            ready.append(receiver)
        url = _wait_until_ready(processes, ready)
        failed = url is None
        if url is None or stopping:
            # A worker could not start, or a signal came while they started (and may have
            # missed the later ones): stop them all.
            stop(signal.SIGTERM, None)
        else:
            announce(url)
        # Wait for every worker; the first one to end on its own ends the others.
        while True:
            if not stopping and any(p.exitcode is not None for p in processes):
                failed = True
                stop(signal.SIGTERM, None)
            running = [p.sentinel for p in processes if p.exitcode is None]
            if not running:
                break
            # Bounded: a sentinel was seen not to wake this wait now and then under load,
            # so the exit codes are also looked at every `SUPERVISE_INTERVAL` seconds.
            wait(running, timeout=SUPERVISE_INTERVAL)
        return 1 if failed or any(p.exitcode for p in processes) else 0
    finally:
        for process in processes:
            process.join(timeout=0)
            if process.exitcode is None:
                process.kill()
                process.join()
        for receiver in ready:
            receiver.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_until_ready(processes: list[BaseProcess], ready: list[Connection]) -> str | None:
    """The URL the workers report once all listen; None if one died or they took too long."""
    url: str | None = None
    waiting = list(ready)
    sentinels = {p.sentinel: p for p in processes}
    give_up = time.monotonic() + STARTUP_TIMEOUT
    while waiting:
        remaining = give_up - time.monotonic()
        if remaining <= 0:
            return None
        for handle in wait([*waiting, *sentinels], timeout=remaining):
            if isinstance(handle, int):
                return None  # a worker ended before it listened
            assert isinstance(handle, Connection)
            try:
                url = handle.recv()
            except EOFError:
                return None
            waiting.remove(handle)
    return url


def _worker(file: Path | None, source: str, address: tuple[str, int], ready: Connection) -> None:
    """One worker process: build the stack, serve on its own socket, say when listening."""
    # Signals come from the parent only (see the module's notes).
    os.setpgrp()
    try:
        config = default_config() if file is None else load_config(file)
        stack = build_stack(config, source)
    except ConfigError as exc:
        print(f"llm-proxy: configuration error: {exc.message}", file=sys.stderr)
        sys.exit(2)
    configure_process_logging(config)
    loader = partial(reload_config, file, source) if file is not None else None
    trio.run(partial(_serve, stack, loader, config, address, ready))


async def _serve(
    stack: Stack,
    loader: Loader | None,
    config: ProxyConfig,
    address: tuple[str, int],
    ready: Connection,
) -> None:
    parent = multiprocessing.parent_process()

    async def parent_gone() -> None:
        if parent is not None:
            await trio.lowlevel.wait_readable(parent.sentinel)
        else:
            await trio.sleep_forever()

    async with (
        LiveStack.open(stack, loader, config=config) as live,
        trio.open_nursery() as nursery,
    ):
        url = await nursery.start(
            partial(
                serve,
                live.pipeline,
                shutdown_trigger=parent_gone,
                host=address[0],
                port=address[1],
                reuse_port=True,
                **live.serve_options(config.server),
            )
        )
        ready.send(url)
        ready.close()
