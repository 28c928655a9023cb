"""Serving a pipeline over HTTP/1.1 on the `http11` engine, with a graceful shutdown."""

from __future__ import annotations

import signal
import socket
from collections.abc import Awaitable, Callable
from functools import partial

import msgspec
import structlog
import trio

import http11
from pipeline import (
    PayloadTooLargeError,
    Pipeline,
    ProxyError,
    ValidationError,
    new_request_id,
)
from pipeline._stream import CLEANUP_TIMEOUT

from ._app import ProxyApp
from ._config import ServerConfig
from ._exchange import Headers
from ._stack import DeploymentsExporter, MetricsExporter, ModelsFor

__all__ = ["engine_config", "serve"]

log = structlog.get_logger("llm_proxy.server")

_DEFAULTS = ServerConfig()


def _engine_error(server: ServerConfig, status: int) -> ProxyError:
    if status == 413:
        return PayloadTooLargeError(
            f"The request body is larger than {server.max_body_bytes} bytes."
        )
    if status == 408:
        return ValidationError(
            f"The request did not arrive within {server.read_timeout:g} s.",
            code="request_timeout",
            status=408,
        )
    if status == 431:
        return ValidationError(
            f"The request head is larger than {server.max_header_bytes} bytes or has more "
            f"than {server.max_headers} headers.",
            code="request_header_fields_too_large",
            status=431,
        )
    if status == 400:
        return ValidationError("The request is not valid HTTP/1.1.", code="bad_request")
    return ProxyError(f"The request was refused ({status}).", status=status)


def error_page(server: ServerConfig, status: int) -> tuple[Headers, bytes]:
    """The engine's own refusals (malformed HTTP, limits, timeouts) as OpenAI error JSON."""
    error = _engine_error(server, status)
    request_id = new_request_id()
    log.info(
        "request_rejected",
        request_id=request_id,
        status=status,
        error=error.type,
        error_message=error.message,
    )
    headers = [(b"content-type", b"application/json"), (b"x-request-id", request_id.encode())]
    return headers, error.to_json()


def engine_config(server: ServerConfig) -> http11.ServerConfig:
    """The engine's limits, timeouts and TLS files from the `[server]` section."""
    return http11.ServerConfig(
        max_body_bytes=server.max_body_bytes,
        max_head_bytes=server.max_header_bytes,
        max_headers=server.max_headers,
        max_connections=server.max_connections,
        read_timeout=server.read_timeout,
        keep_alive_timeout=server.keep_alive_timeout,
        write_timeout=server.write_timeout,
        grace_period=server.grace_period,
        certfile=server.tls_certificate,
        keyfile=server.tls_key,
    )


async def serve(
    pipeline: Pipeline,
    *,
    host: str | None = None,
    port: int | None = None,
    models_for: ModelsFor | None = None,
    metrics: MetricsExporter | None = None,
    deployments: DeploymentsExporter | None = None,
    server: ServerConfig | None = None,
    max_body_bytes: int | None = None,
    read_timeout: float | None = None,
    keep_alive_timeout: float | None = None,
    grace_period: float | None = None,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    handle_signals: bool = True,
    sock: socket.socket | None = None,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `pipeline` over HTTP until shut down, then close it.

    Shutdown starts when `shutdown_trigger` returns or, with `handle_signals`, on SIGINT or
    SIGTERM. The server stops accepting connections, closes idle ones, lets running
    requests finish for up to `grace_period` seconds, then cuts what is left: a stream
    ends with an error event saying the server is shutting down, an answer not yet started
    gets a 503; then it closes the pipeline (`pipeline.aclose()`). A second signal skips
    the grace period.

    Use it with `trio.run(partial(serve, pipeline, port=8080))`, or start it in a nursery
    to learn the address: `url = await nursery.start(partial(serve, pipeline, port=0))`.

    Args:
      pipeline: the stack to serve; closed when the server stops.
      host: the address to listen on (default `server.host`).
      port: the port to listen on; 0 picks a free one (default `server.port`).
      models_for: see `ProxyApp`.
      metrics: see `ProxyApp`.
      deployments: see `ProxyApp`.
      server: limits, timeouts and TLS (the `[server]` section); defaults when None.
      max_body_bytes: overrides `server.max_body_bytes`.
      read_timeout: overrides `server.read_timeout`.
      keep_alive_timeout: overrides `server.keep_alive_timeout`.
      grace_period: overrides `server.grace_period`.
      shutdown_trigger: an async function whose return starts the shutdown.
      handle_signals: shut down on SIGINT/SIGTERM (only possible in the main thread).
      sock: a bound socket to listen on, instead of binding `host` and `port`.
      reuse_port: bind with SO_REUSEPORT, so that each worker process of
        `llm-proxy serve --workers` has a listening socket of its own on the one port.
      task_status: receives the server's base URL (`http://127.0.0.1:8080`) once it
        listens.
    """
    settings = server or _DEFAULTS
    overrides = {
        "max_body_bytes": max_body_bytes,
        "read_timeout": read_timeout,
        "keep_alive_timeout": keep_alive_timeout,
        "grace_period": grace_period,
    }
    given = {name: value for name, value in overrides.items() if value is not None}
    if given:
        settings = msgspec.structs.replace(settings, **given)
    app = ProxyApp(pipeline, models_for=models_for, metrics=metrics, deployments=deployments)
    engine = http11.Server(app, engine_config(settings), error_page=partial(error_page, settings))
    stopping = False

    async def wait_for_trigger(trigger: Callable[[], Awaitable[object]]) -> None:
        await trigger()
        engine.shutdown()

    async def wait_for_signals() -> None:
        nonlocal stopping
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if stopping:
                    log.warning("shutdown_forced", signal=signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return
                log.info(
                    "shutdown_started",
                    signal=signal.Signals(signum).name,
                    grace_period=settings.grace_period,
                )
                stopping = True
                engine.shutdown()

    async def run_server(task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await engine.serve(
                host=settings.host if host is None else host,
                port=settings.port if port is None else port,
                sock=sock,
                reuse_port=reuse_port,
                task_status=task_status,
            )
        finally:
            # The shutdown is done (or was forced): the signal and trigger watchers go too.
            nursery.cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            if handle_signals:
                nursery.start_soon(wait_for_signals)
            if shutdown_trigger is not None:
                nursery.start_soon(wait_for_trigger, shutdown_trigger)
            urls = await nursery.start(run_server)
            log.info("listening", url=urls[0])
            task_status.started(urls[0])
    finally:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CLEANUP_TIMEOUT):
            await pipeline.aclose()
        log.info("stopped")
