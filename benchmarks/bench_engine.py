"""Requests per second of the http11 engine: a canned upstream, and a relay in front of it.

Run: ``python -m benchmarks.bench_engine [--connections 32] [--seconds 5]``

Three processes on 127.0.0.1: the upstream (an http11 server answering canned JSON), the
relay (an http11 server whose handler forwards each request with the http11 client), and
the load generator (`wrk` when installed, else the http11 client in a subprocess) holding
`--connections` keep-alive connections. It prints req/s straight to the upstream, and
through the relay. Each of the two measurements runs `--seconds` (bounded to 20).

``python -m benchmarks.bench_engine --in-process [--connections 8] [--requests 4000]``
runs the http11 client, the relay and the upstream in one trio process instead and prints
the CPU time (`time.process_time`) per relayed request, best of five rounds: the steadiest
number on a shared machine, for comparing two versions of the engine (run each with
``PYTHONPATH`` pointing at its tree, alternating). It counts the engine three times over
(the load's client, the relay's server and client, the upstream's server).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time

import trio

from http11 import Client, Request, Responder, Server, ServerConfig

CANNED = (
    b'{"id":"chatcmpl-1","object":"chat.completion","model":"mock-1","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}'
)
JSON = [(b"content-type", b"application/json")]


async def upstream(request: Request, responder: Responder) -> None:
    await responder.respond(200, JSON, CANNED)


def relay_to(base: str) -> tuple[Client, object]:
    client = Client(pool_size=256, trust_env=False)

    async def relay(request: Request, responder: Responder) -> None:
        async with await client.request(
            request.method, base + request.target.decode("latin-1"), JSON, request.body
        ) as response:
            body = await response.read()
        await responder.respond(response.status, JSON, body)

    return client, relay


async def run_server(role: str, upstream_url: str) -> None:
    if role == "upstream":
        server = Server(upstream, ServerConfig(backlog=1024))
    else:
        _, relay = relay_to(upstream_url)
        server = Server(relay, ServerConfig(backlog=1024))  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(server.serve)
        print(urls[0], flush=True)
        # Stop when the parent closes our stdin (or after a bounded time).
        with trio.move_on_after(120):
            await trio.to_thread.run_sync(sys.stdin.read)
        server.shutdown()


async def load(url: str, connections: int, seconds: float) -> None:
    client = Client(pool_size=connections, trust_env=False)
    done = 0
    deadline = trio.current_time() + seconds

    async def worker() -> None:
        nonlocal done
        while trio.current_time() < deadline:
            response = await client.request(b"GET", url, [])
            await response.read()
            done += 1

    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(worker)
    print(f"Requests/sec: {done / seconds:.1f}", flush=True)


async def in_process(connections: int, requests: int, rounds: int = 5) -> float:
    """Best CPU microseconds per relayed request, everything in this process."""
    async with trio.open_nursery() as nursery:
        upstream_server = Server(upstream, ServerConfig())
        upstream_url = (await nursery.start(upstream_server.serve))[0]
        _, relay = relay_to(upstream_url)
        relay_server = Server(relay, ServerConfig())  # type: ignore[arg-type]
        url = (await nursery.start(relay_server.serve))[0] + "/v1/chat/completions"
        client = Client(pool_size=connections, trust_env=False)

        async def worker(count: int) -> None:
            for _ in range(count):
                async with await client.request(b"GET", url, []) as response:
                    await response.read()

        async def run(total: int) -> None:
            async with trio.open_nursery() as workers:
                for _ in range(connections):
                    workers.start_soon(worker, total // connections)

        await run(connections * 200)  # warm up: connections, caches
        best = float("inf")
        for _ in range(rounds):
            started = time.process_time()
            await run(requests)
            best = min(best, (time.process_time() - started) / requests * 1e6)
        upstream_server.shutdown()
        relay_server.shutdown()
        nursery.cancel_scope.cancel()
    return best


def measure(url: str, connections: int, seconds: float) -> float:
    wrk = shutil.which("wrk")
    if wrk is not None:
        command = [wrk, "-t1", f"-c{connections}", f"-d{int(seconds)}s", url]
    else:
        command = [sys.executable, "-m", "benchmarks.bench_engine", "--role", "load", url]
        command += ["--connections", str(connections), "--seconds", str(seconds)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30).stdout
    found = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"no result from the load generator: {out!r}")
    return float(found.group(1))


def start(role: str, upstream_url: str = "") -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "benchmarks.bench_engine", "--role", role, upstream_url]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def stop(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.close()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["upstream", "relay", "load"])
    parser.add_argument("url", nargs="?", default="")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--in-process", action="store_true", help="CPU per request, one process")
    parser.add_argument("--requests", type=int, default=4000, help="per round (--in-process)")
    args = parser.parse_args()
    if args.in_process:
        connections = min(max(args.connections, 1), 256)
        requests = max(args.requests // connections, 1) * connections
        best = trio.run(in_process, connections, requests)
        print(f"in process, {connections} connections: {best:.1f} us CPU per relayed request")
        return
    seconds = min(max(args.seconds, 1.0), 20.0)
    connections = min(max(args.connections, 1), 256)
    if args.role in ("upstream", "relay"):
        trio.run(run_server, args.role, args.url)
        return
    if args.role == "load":
        trio.run(load, args.url, connections, seconds)
        return
    generator = "wrk" if shutil.which("wrk") else "the http11 client"
    print(f"load: {generator}, {connections} keep-alive connections, {seconds:.0f} s each")
    upstream_process, upstream_url = start("upstream")
    relay_process, relay_url = start("relay", upstream_url)
    try:
        time.sleep(0.2)
        direct = measure(upstream_url + "/v1/chat/completions", connections, seconds)
        relayed = measure(relay_url + "/v1/chat/completions", connections, seconds)
    finally:
        stop(relay_process)
        stop(upstream_process)
    print(f"direct upstream: {direct:10.0f} req/s")
    print(f"through relay:   {relayed:10.0f} req/s  ({relayed / direct:.2f} of direct)")


if __name__ == "__main__":
    main()
