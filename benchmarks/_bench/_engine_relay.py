"""The engine's bare relay: the http11 server and the http11 client, nothing else.

The floor of the proxy on its own engine, as `_relay` is the floor on hypercorn + httpx:
it reads the request, forwards it with the same headers to the upstream through one pooled
`http11.Client`, and copies the answer's status, content type and body back, streamed
piece by piece as it arrives. No parsing, no validation, no middleware.

    python -m benchmarks._bench._engine_relay --upstream http://127.0.0.1:8901 [--port 0]

prints `engine relay ready on http://127.0.0.1:PORT` and serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal

import trio

from http11 import Client, Handler, Request, Responder, Server, ServerConfig

__all__ = ["READY", "main"]

READY = "engine relay ready on"

# Headers that describe one hop's connection or framing, not the message.
_HOP = frozenset({b"host", b"connection", b"content-length", b"transfer-encoding"})


def relay_to(upstream: str, client: Client) -> Handler:
    """The handler that forwards each request to `upstream` with `client`."""
    base = upstream.rstrip("/")

    async def relay(request: Request, responder: Responder) -> None:
        headers = [(name, value) for name, value in request.headers if name not in _HOP]
        url = base + request.target.decode("latin-1")
        async with await client.request(request.method, url, headers, request.body) as answer:
            kept = [(b"content-type", answer.header(b"content-type") or b"application/json")]
            await responder.start(answer.status, kept)
            while piece := await answer.receive_some():
                await responder.write(piece)
            await responder.end()

    return relay


async def _serve(upstream: str, host: str, port: int) -> None:
    async with Client(pool_size=256, trust_env=False) as client:
        server = Server(relay_to(upstream, client), ServerConfig(backlog=1024))
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(
                lambda task_status: server.serve(host=host, port=port, task_status=task_status)
            )
            print(f"{READY} {urls[0]}", flush=True)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            server.shutdown()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks._bench._engine_relay")
    parser.add_argument("--upstream", required=True, help="the base URL to forward to")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    trio.run(_serve, args.upstream, args.host, args.port)


if __name__ == "__main__":
    main()
