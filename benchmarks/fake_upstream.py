"""A fake LLM upstream for tests and benchmarks: a real HTTP server on loopback.

It imitates OpenAI chat completions, Anthropic Messages and the legacy completions API of
the custom-provider guide, streamed and whole, byte-exact enough for real clients. Knobs
(`FakeConfig`) make it slow, wrong or broken on purpose; any request may override them
with `x-fake-*` headers, so one server serves many test cases. It records every request
and every client that went away early.

In a test or an in-process benchmark:

    async with run_fake_upstream(FakeConfig(chunks=50)) as upstream:
        ...  # talk to upstream.url
        await upstream.wait_for_disconnects(1)

As a process (prints `fake upstream ready on http://HOST:PORT`, stops on SIGINT/SIGTERM):

    python -m benchmarks.fake_upstream --host 127.0.0.1 --port 8901 --chunks 50 --ttft 0.2
"""

from __future__ import annotations

import argparse
import signal

import trio

from ._fake._answer import fake_text
from ._fake._config import KNOBS, FakeConfig, KnobError, config_from_options
from ._fake._server import Disconnect, FakeUpstream, RecordedRequest, run_fake_upstream

__all__ = [
    "Disconnect",
    "FakeConfig",
    "FakeUpstream",
    "KnobError",
    "READY",
    "RecordedRequest",
    "fake_text",
    "main",
    "parse_args",
    "run_fake_upstream",
]

READY = "fake upstream ready on"


async def _serve_until_signal(config: FakeConfig, host: str, port: int) -> None:
    """Run the fake until SIGINT or SIGTERM, printing a ready line with its URL."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with run_fake_upstream(config, host=host, port=port) as upstream:
            print(f"{READY} {upstream.url}", flush=True)
            async for _ in signals:
                break


def parse_args(argv: list[str] | None = None) -> tuple[FakeConfig, str, int]:
    """The config, host and port from command-line arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fake_upstream",
        description="Serve the fake LLM upstream. Knobs are FakeConfig's (see its docstring).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    defaults = FakeConfig()
    for name in KNOBS:
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        if isinstance(default, bool):
            parser.add_argument(flag, dest=name, action="store_const", const="true")
        else:
            parser.add_argument(flag, dest=name, metavar="VALUE", help=f"default: {default}")
    parser.add_argument("--models", help="comma-separated names for GET /v1/models")
    parser.add_argument(
        "--record", action="store_true", help="keep every request (off: long runs stay small)"
    )
    args = parser.parse_args(argv)
    options: dict[str, object] = {name: getattr(args, name) for name in KNOBS}
    options["record"] = args.record
    if args.models:
        options["models"] = args.models.split(",")
    try:
        config = config_from_options(options)
    except KnobError as exc:
        parser.error(str(exc))
    return config, args.host, args.port


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    config, host, port = parse_args(argv)
    trio.run(_serve_until_signal, config, host, port)


if __name__ == "__main__":
    main()
