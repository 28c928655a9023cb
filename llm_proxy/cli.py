"""The `llm-proxy` command: serve a configured stack, check a configuration, or benchmark.

    llm-proxy serve [--config FILE] [--host H] [--port P] [--workers N] [--pid-file F]
    llm-proxy reload (--pid-file F | --port P)   (the server reads its configuration again)
    llm-proxy check-config FILE      (every problem at once; warnings do not fail it)
    llm-proxy bench [--quick] [--compare litellm] [--out DIR] ...   (see `llm-proxy bench -h`)

Without `--config`, `serve` runs the embedded default (`llm_proxy.DEFAULT_CONFIG`): mock
models, no API key, no network, on 127.0.0.1:8080. With several workers (`--workers` or
`server.workers`), N processes serve on one port, each with its own stack; that needs a
shared store (`[store] backend = "redis"`), or `server.allow_per_worker_state = true` to
accept limits and a cache that count per worker. SIGHUP (what `reload` sends) makes a
server read its configuration file again; see `llm_proxy._reload`. Exit status: 0 after a
clean shutdown or a valid configuration, 1 when a provider fails validation, the address
is taken or a worker fails, 2 for a configuration error or bad arguments.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import trio

from pipeline import ConfigError, ProxyError

from ._config import ProxyConfig, key_warnings, load_config
from ._reload import LiveStack, Loader, listening_pids, reload_config
from ._serve import serve
from ._stack import (
    DEFAULT_SOURCE,
    Stack,
    build_stack,
    configure_process_logging,
    default_config,
)
from ._workers import reserve, run_workers

__all__ = ["main"]

# Seconds `check-config` waits for one provider's validation, at most: the provider's
# `timeout` bounds answers, which may take minutes; a check should not.
VALIDATION_TIMEOUT = 30.0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="llm-proxy", description="An OpenAI-compatible LLM proxy on a middleware pipeline."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser(
        "serve", help="serve the stack a configuration describes (the embedded default without one)"
    )
    serve_parser.add_argument("--config", type=Path, help="a TOML configuration file")
    serve_parser.add_argument("--host", help="the address to listen on (overrides server.host)")
    serve_parser.add_argument(
        "--port", type=_port, help="the port to listen on; 0 picks a free one (server.port)"
    )
    serve_parser.add_argument(
        "--workers",
        type=_positive,
        help="worker processes serving on the one port (overrides server.workers)",
    )
    serve_parser.add_argument(
        "--pid-file", type=Path, help="write the server's process id here (for `reload`)"
    )
    reload_parser = commands.add_parser(
        "reload", help="make a running server read its configuration file again (SIGHUP)"
    )
    target = reload_parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--pid-file", type=Path, help="the pid file `serve --pid-file` wrote")
    target.add_argument("--port", type=_port, help="the port the server listens on")
    check_parser = commands.add_parser(
        "check-config", help="validate a configuration and every provider it names"
    )
    check_parser.add_argument("file", type=Path, help="a TOML configuration file")
    # The harness parses its own options (`llm-proxy bench --help` lists them).
    commands.add_parser(
        "bench",
        add_help=False,
        help="measure the proxy's throughput and latency against a fake upstream",
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        # The harness is a tool that sits above the application (it starts proxies, fake
        # upstreams and load generators, and needs the optional `bench` extra): loaded only
        # when asked for, so serving never imports it.
        try:
            from benchmarks.bench_http import main as bench
        except ModuleNotFoundError as exc:
            print(
                f"llm-proxy bench needs the `bench` extra ({exc.name} is missing): "
                "pip install 'llm-proxy[bench]'",
                file=sys.stderr,
            )
            return 2
        return bench(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "serve":
            return _serve(args.config, args.host, args.port, args.workers, args.pid_file)
        if args.command == "reload":
            return _reload(args.pid_file, args.port)
        return _check_config(args.file)
    except ConfigError as exc:
        print(f"llm-proxy: configuration error: {exc.message}", file=sys.stderr)
        return 2


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _positive(text: str) -> int:
    number = _integer(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{number} is not a positive number")
    return number


def _port(text: str) -> int:
    port = _integer(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0-65535)")
    return port


# -- serve -----------------------------------------------------------------------------------


def _serve(
    file: Path | None,
    host: str | None,
    port: int | None,
    workers: int | None,
    pid_file: Path | None = None,
) -> int:
    if file is None:
        config, source = default_config(), DEFAULT_SOURCE
    else:
        config, source = load_config(file), str(file)
    workers = workers or config.server.workers
    _check_workers(config, source, workers)
    host = host if host is not None else config.server.host
    port = port if port is not None else config.server.port
    stack = build_stack(config, source)
    configure_process_logging(config)
    warning = _exposure_warning(config, host)
    if warning is not None:
        print(warning, file=sys.stderr, flush=True)
    if workers > 1:
        # Built above only to report configuration errors before any worker starts; each
        # worker builds its own.
        trio.run(stack.pipeline.aclose)
        return _serve_workers(config, file, source, host, port, workers, pid_file)
    failure: BaseException | None = None
    loader = partial(reload_config, file, source) if file is not None else None
    try:
        with _pid_file(pid_file):
            trio.run(_run, stack, loader, config, source, host, port)
    except* OSError as group:
        failure = _first_leaf(group)
    if failure is not None:
        print(f"llm-proxy: cannot listen on {host}:{port}: {failure}", file=sys.stderr)
        return 1
    return 0


def _check_workers(config: ProxyConfig, source: str, workers: int) -> None:
    """Refuse several workers that would each keep their own limits and cache.

    Raises:
      ConfigError: more than one worker on the memory store, not explicitly allowed.
    """
    if (
        workers > 1
        and config.store.backend == "memory"
        and not config.server.allow_per_worker_state
    ):
        raise ConfigError(
            f"{source}: {workers} workers on the memory store would each keep their own rate "
            "limits, concurrency slots and cache; share them with `[store] backend = "
            '"redis"`, or set `server.allow_per_worker_state = true` if that is what you '
            "want - at `server.workers`",
            param="server.workers",
        )


def _serve_workers(
    config: ProxyConfig,
    file: Path | None,
    source: str,
    host: str,
    port: int,
    workers: int,
    pid_file: Path | None = None,
) -> int:
    try:
        sock = reserve(host, port)
    except OSError as exc:
        print(f"llm-proxy: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    with sock:

        def announce(url: str) -> None:
            print(_banner(url, config, source, workers), flush=True)

        with _pid_file(pid_file):
            status = run_workers(workers, file, source, sock.getsockname()[:2], announce)
    if status:
        print("llm-proxy: a worker failed; all workers were stopped", file=sys.stderr)
    return status


def _first_leaf(group: BaseExceptionGroup[OSError]) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def _run(
    stack: Stack, loader: Loader | None, config: ProxyConfig, source: str, host: str, port: int
) -> None:
    async with (
        LiveStack.open(stack, loader, config=config) as live,
        trio.open_nursery() as nursery,
    ):
        url = await nursery.start(
            partial(serve, live.pipeline, host=host, port=port, **live.serve_options(config.server))
        )
        print(_banner(url, config, source), flush=True)


@contextmanager
def _pid_file(path: Path | None) -> Iterator[None]:
    """Write this process's id to `path` for the block's duration (nothing when None)."""
    if path is None:
        yield
        return
    path.write_text(f"{os.getpid()}\n")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


# -- reload ----------------------------------------------------------------------------------


def _reload(pid_file: Path | None, port: int | None) -> int:
    """Send SIGHUP to the server named by its pid file, or to every process on its port."""
    if pid_file is not None:
        try:
            pids = [int(pid_file.read_text().strip())]
        except (OSError, ValueError) as exc:
            print(f"llm-proxy: cannot read the pid file {pid_file}: {exc}", file=sys.stderr)
            return 1
    else:
        assert port is not None
        pids = listening_pids(port)
        if not pids:
            print(f"llm-proxy: no process of yours listens on port {port}", file=sys.stderr)
            return 1
    for pid in pids:
        try:
            os.kill(pid, signal.SIGHUP)
        except OSError as exc:
            print(f"llm-proxy: cannot signal process {pid}: {exc}", file=sys.stderr)
            return 1
    print(f"llm-proxy: asked {_processes(pids)} to reload")
    return 0


def _processes(pids: Sequence[int]) -> str:
    return ", ".join(f"process {pid}" for pid in pids)


def _banner(url: str, config: ProxyConfig, source: str, workers: int = 1) -> str:
    """What a person needs to start talking to the server."""
    models = [model.name for model in config.models]
    auth = "on" if config.keys else "off"
    key_header = " \\\n    -H 'authorization: Bearer YOUR_KEY'" if config.keys else ""
    body = f'{{"model": "{models[0]}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'
    return (
        f"llm-proxy is serving {source} at {url}/v1\n"
        f"models: {', '.join(models)}\n"
        f"authentication: {auth}\n"
        f"{_state_line(config, workers)}"
        "try it:\n"
        f"  curl {url}/v1/chat/completions \\\n"
        f"    -H 'content-type: application/json'{key_header} \\\n"
        f"    -d '{body}'\n"
        "Press Ctrl-C to stop."
    )


def _state_line(config: ProxyConfig, workers: int) -> str:
    """Where limits and the cache live, and how many processes serve."""
    if config.store.backend == "redis":
        where = "in redis, shared by every instance on it"
    else:
        where = "in memory, per process"
    processes = f"{workers} worker processes" if workers > 1 else "one process"
    return f"limits and cache: {where}; serving with {processes}\n"


def _exposure_warning(config: ProxyConfig, host: str) -> str | None:
    """A loud warning when anyone on the network could use the proxy without a key."""
    if config.keys or _is_loopback(host):
        return None
    return (
        f"WARNING: authentication is OFF and llm-proxy listens on {host}, which other\n"
        "WARNING: machines may reach: anyone who connects can use every configured model.\n"
        "WARNING: add [[keys]] to the configuration, or listen on 127.0.0.1."
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- check-config ----------------------------------------------------------------------------


def _check_config(file: Path) -> int:
    config = load_config(file)
    stack = build_stack(config, str(file))
    print(
        f"{file}: the configuration is valid ({len(config.providers)} providers, "
        f"{len(config.models)} models, {len(config.keys)} keys)"
    )
    for warning in key_warnings(config):
        print(f"{file}: warning: {warning}")
    failures = trio.run(_validate_providers, stack, config)
    if failures:
        print(f"{file}: {failures} of {len(config.providers)} providers failed validation")
        return 1
    print(f"{file}: every provider validated")
    return 0


async def _validate_providers(stack: Stack, config: ProxyConfig) -> int:
    """Validate each provider in turn, print one line for each, and count the failures."""
    failures = 0
    try:
        for section in config.providers:
            label = f"provider `{section.name}` ({section.kind})"
            problem = None
            limit = min(section.timeout, VALIDATION_TIMEOUT)
            with trio.move_on_after(limit) as scope:
                try:
                    await stack.providers[section.name].validate()
                except ProxyError as exc:
                    problem = exc.message
                except Exception as exc:
                    problem = f"{type(exc).__name__}: {exc}"
            if scope.cancelled_caught:
                problem = f"no answer within {limit:g} s"
            if problem is None:
                print(f"  ok    {label}")
            else:
                failures += 1
                print(f"  FAIL  {label}: {problem}")
    finally:
        await stack.pipeline.aclose()
    return failures


if __name__ == "__main__":
    sys.exit(main())
