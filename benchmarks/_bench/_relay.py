"""The bare relay: hypercorn's trio worker and one shared httpx client, nothing else.

It is the floor any Python proxy on this stack stands on: it reads the request body,
forwards it with the same headers to the upstream, and copies the answer's status,
content type and body back, streamed as it arrives. No parsing, no validation, no
middleware. The proxy's throughput goal is a share of this relay's.

    python -m benchmarks._bench._relay --upstream http://127.0.0.1:8901 [--port 0]

prints `relay ready on http://127.0.0.1:PORT` and serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

__all__ = ["READY", "Relay", "main"]

READY = "relay ready on"

Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# Headers that describe one hop's connection or framing, not the message.
_HOP = frozenset({b"host", b"connection", b"content-length", b"transfer-encoding"})
# What the client needs of the answer's headers: its type and, for a whole answer, its length.
_KEEP = frozenset({b"content-type", b"content-length"})


class Relay:
    """An ASGI app that forwards every request to `upstream` with `client`.

    Args:
      upstream: the base URL requests are forwarded to (`http://127.0.0.1:8901`).
      client: the one pooled client every request shares.
    """

    def __init__(self, upstream: str, client: httpx.AsyncClient) -> None:
        self.upstream = upstream.rstrip("/")
        self.client = client

    async def __call__(self, scope: Mapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        parts = []
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        headers = [(name, value) for name, value in scope["headers"] if name not in _HOP]
        request = self.client.build_request(
            scope["method"], self.upstream + scope["path"], headers=headers, content=b"".join(parts)
        )
        response = await self.client.send(request, stream=True)
        try:
            headers = [(name, value) for name, value in response.headers.raw if name in _KEEP]
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": headers}
            )
            async for piece in response.aiter_raw():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()


async def _serve(upstream: str, host: str, port: int) -> None:
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        config = Config()
        config.bind = [f"{host}:{port}"]
        config.accesslog = None
        config.loglevel = "WARNING"
        stop = trio.Event()
        app: Any = Relay(upstream, client)
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                lambda task_status: serve(
                    app, config, shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            print(f"{READY} {binds[0]}", flush=True)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            stop.set()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks._bench._relay")
    parser.add_argument("--upstream", required=True, help="the base URL to forward to")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    trio.run(_serve, args.upstream, args.host, args.port)


if __name__ == "__main__":
    main()
