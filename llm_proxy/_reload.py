"""Hot reload: read the configuration again and swap the stack without dropping a request.

`LiveStack` serves one *generation* of the stack (its pipeline, providers, store) at a
time. On `reload()` (SIGHUP, or `llm-proxy reload`) it reads the file again:

- a file with errors is refused: every error is logged and the running stack serves on;
- a good file is built into a new stack, whose resources (a Redis store, health checks)
  are opened; new requests go to it from then on. Requests already running, streams
  included, finish on the stack they started on: each holds its generation until its
  stream is closed. Once the old generation has no request left, its pipeline is closed
  (providers, pools) and then its resources.

The `[server]` section (address, limits, workers) is read only at start: a reload that
changes it says so in the log and keeps the old settings until the server is restarted.
Counters on `/metrics` start again from zero with each generation (Prometheus reads that
as a counter reset).

Each generation runs in a task of its own, which opens its resources and closes them, as
trio wants a nursery (a Redis store's) closed by the task that opened it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog
import trio

from pipeline import (
    ConfigError,
    Context,
    NotFoundError,
    Pipeline,
    Request,
    ResponseStream,
)
from pipeline._stream import CLEANUP_TIMEOUT

from ._config import ProxyConfig, ServerConfig, load_config
from ._stack import Stack, build_stack, configure_process_logging

__all__ = ["LivePipeline", "LiveStack", "Loader", "listening_pids", "reload_config"]

log = structlog.get_logger("llm_proxy.reload")

Loader = Callable[[], tuple[ProxyConfig, Stack]]
"""Reads and builds the configuration again; raises `ConfigError` for a bad file."""


class _Generation:
    """One stack while it serves, and the requests still running on it."""

    __slots__ = ("drained", "in_flight", "number", "retired", "stack")

    def __init__(self, stack: Stack, number: int) -> None:
        self.stack = stack
        self.number = number
        self.in_flight = 0
        self.retired = False
        self.drained = trio.Event()

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        if self.retired and self.in_flight == 0:
            self.drained.set()

    def retire(self) -> None:
        self.retired = True
        if self.in_flight == 0:
            self.drained.set()

    async def run(self, task_status: trio.TaskStatus[None]) -> None:
        """Open the resources, serve until retired and drained, then close everything."""
        async with self.stack.running():
            task_status.started()
            try:
                await self.drained.wait()
            finally:
                # Cancelled (a forced shutdown) as well as drained: its providers close.
                with trio.CancelScope(shield=True, deadline=trio.current_time() + CLEANUP_TIMEOUT):
                    await self.stack.pipeline.aclose()
        log.info("stack_closed", generation=self.number)


class LivePipeline(Pipeline):
    """The pipeline the server sees: each request runs on the generation current when it
    arrived, and holds it until its stream is closed."""

    def __init__(self, live: LiveStack) -> None:
        # Not a chain of its own: everything is delegated to the current generation.
        self._live = live
        self.middlewares = ()

    @property
    def provider(self) -> Any:  # type: ignore[override]
        """The current generation's provider (the `Router`)."""
        return self._live.current.stack.pipeline.provider

    async def handle(self, request: Request, ctx: Context | None = None) -> ResponseStream:
        generation = self._live.current
        generation.enter()
        try:
            stream = await generation.stack.pipeline.handle(request, ctx)
        except BaseException:
            generation.leave()
            raise
        return ResponseStream(stream, on_close=generation.leave)

    async def validate(self) -> None:
        await self._live.current.stack.pipeline.validate()

    async def aclose(self) -> None:
        """Retire every generation and wait until each has closed its stack."""
        await self._live.close()


class LiveStack:
    """A stack that `reload()` replaces while it serves (see the module's notes).

    Open it with `LiveStack.open(stack, loader)`; serve `live.pipeline` with
    `live.serve_options(server)`.

    Args:
      loader: reads and builds the configuration again (None: reloading is refused).
      config: the configuration the first stack was built from.
    """

    def __init__(self, loader: Loader | None, config: ProxyConfig | None) -> None:
        self.loader = loader
        self.config = config
        self.pipeline = LivePipeline(self)
        self.reloads = 0
        self._generations = 0
        self._current: _Generation | None = None
        self._nursery: trio.Nursery | None = None
        self._lock = trio.Lock()
        self._closed = trio.Event()

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        stack: Stack,
        loader: Loader | None = None,
        *,
        config: ProxyConfig | None = None,
        handle_signals: bool = True,
    ) -> AsyncIterator[LiveStack]:
        """Serve `stack` as the first generation for the duration of the block.

        With `handle_signals`, SIGHUP reloads. Leaving the block closes every generation
        (after the server has stopped, `serve` closes the pipeline, which does the same).
        """
        live = cls(loader, config)
        signals = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            live._nursery = nursery
            await live._start(stack)
            if handle_signals:
                await nursery.start(live._watch_signals, signals)
            try:
                yield live
            finally:
                signals.cancel()
                # The nursery then waits for each generation to close its stack.
                await live.close()

    @property
    def current(self) -> _Generation:
        if self._current is None:
            raise RuntimeError("the live stack is not open")
        return self._current

    @property
    def stack(self) -> Stack:
        """The stack new requests go to."""
        return self.current.stack

    def serve_options(self, server: ServerConfig) -> dict[str, Any]:
        """`serve`'s keyword arguments, each following the current generation."""
        return {
            "models_for": self._models_for,
            "metrics": self._metrics,
            "deployments": self._deployments,
            "server": server,
        }

    def _models_for(self, ctx: Context) -> Sequence[str] | Any:
        models_for = self.stack.models_for
        return models_for(ctx) if models_for is not None else []

    def _metrics(self, ctx: Context) -> tuple[bytes, str]:
        metrics = self.stack.metrics
        if metrics is None:
            raise NotFoundError("Metrics are not enabled on this server.", code="unknown_url")
        return metrics(ctx)

    async def _deployments(self, ctx: Context) -> bytes:
        deployments = self.stack.deployments
        if deployments is None:
            raise NotFoundError("This server lists no deployments.", code="unknown_url")
        return await deployments(ctx)

    async def _start(self, stack: Stack) -> None:
        """Open a new generation's resources and make it current; retire the previous one."""
        assert self._nursery is not None
        self._generations += 1
        generation = _Generation(stack, self._generations)
        await self._nursery.start(generation.run)
        previous, self._current = self._current, generation
        if previous is not None:
            previous.retire()

    async def reload(self) -> bool:
        """Read the configuration again and serve it, or keep the running stack.

        Returns:
          whether the new configuration is being served.
        """
        async with self._lock:
            if self.loader is None or self._closed.is_set():
                log.warning("reload_refused", reason="this server has no file to reload")
                return False
            try:
                config, stack = self.loader()
            except ConfigError as exc:
                log.error("reload_refused", errors=exc.message.splitlines())
                return False
            try:
                await self._start(stack)
            except Exception as exc:
                log.error("reload_refused", errors=[f"cannot open the new stack: {exc}"])
                with trio.CancelScope(shield=True, deadline=trio.current_time() + CLEANUP_TIMEOUT):
                    await stack.pipeline.aclose()
                return False
            if self.config is not None and config.server != self.config.server:
                log.warning(
                    "reload_server_unchanged",
                    reason="[server] settings take effect only when the server restarts",
                )
            else:
                self.config = config
            self.reloads += 1
            log.info(
                "reloaded",
                generation=self.current.number,
                models=[m.name for m in config.models],
                providers=[p.name for p in config.providers],
            )
            return True

    async def _watch_signals(
        self, scope: trio.CancelScope, task_status: trio.TaskStatus[None]
    ) -> None:
        with scope, trio.open_signal_receiver(signal.SIGHUP) as signals:
            task_status.started()
            async for _ in signals:
                log.info("reload_requested", signal="SIGHUP")
                await self.reload()

    async def close(self) -> None:
        """Retire every generation and wait until each has closed its stack."""
        if self._closed.is_set():
            return
        self._closed.set()
        async with self._lock:
            current = self._current
            if current is not None:
                current.retire()
                await current.drained.wait()


def reload_config(file: Path, source: str) -> tuple[ProxyConfig, Stack]:
    """The `Loader` of a server started from `file`: read it, build it, log as it says.

    Raises:
      ConfigError: the file cannot be read, is not valid, or cannot be built.
    """
    config = load_config(file)
    stack = build_stack(config, source)
    configure_process_logging(config)
    return config, stack


def listening_pids(port: int) -> list[int]:
    """The processes of this user with a TCP socket listening on `port` (Linux `/proc`).

    With `--workers` that is every worker; each one reloads on its own.
    """
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{inode}]")
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
        except OSError:
            continue  # gone, or not ours
        if links & inodes:
            pids.append(int(entry.name))
    return sorted(pids)


_LISTEN = "0A"
"""The state of a listening socket in `/proc/net/tcp`."""
