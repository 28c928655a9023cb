"""CPU per request of the minimal stack, in one trio process: client, proxy and fake upstream.

The real app (`llm-proxy serve`'s stack from `llm-proxy bench`'s minimal configuration) on
the real engine, in front of the fake upstream on the engine, driven by the engine's
client over keep-alive connections; all three in one process, so `time.process_time`
per request counts all three. A second variant, `pipeline`, calls the pipeline directly
(no server, no client): the app's door is left out, the provider and its HTTP client to
the fake are in. A third, `relay`, puts the engine's bare relay where the proxy was: the
proxy's own cost is `http` minus `relay`. Rows are the best of `--repeats` batches;
alternate runs of two trees with `PYTHONPATH=<tree>` and compare the ratios.

    python -m benchmarks.bench_minimal_cpu [--requests 2000] [--repeats 5] [--connections 1]
        [--stream] [--only http|relay|pipeline] [--profile out.prof]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import time
from functools import partial

import structlog
import trio

import http11
from benchmarks._bench._client import chat_body_parts
from benchmarks._bench._engine_relay import relay_to
from benchmarks._bench._harness import _MINIMAL, MODEL, UPSTREAM_KEY
from benchmarks.fake_upstream import FakeConfig, run_fake_upstream
from llm_proxy._config import parse_config
from llm_proxy._reload import LiveStack
from llm_proxy._serve import serve
from llm_proxy._stack import build_stack
from middlewares import configure_logging
from pipeline import decode_request

JSON = [(b"content-type", b"application/json")]


def _bodies(stream: bool, n: int, first: int) -> list[bytes]:
    before, after = chat_body_parts(MODEL, stream=stream)
    return [before + str(first + i).zfill(8).encode()[-8:] + after for i in range(n)]


async def _http_batch(
    client: http11.Client, url: str, bodies: list[bytes], connections: int
) -> None:
    per = len(bodies) // connections

    async def one(chunk: list[bytes]) -> None:
        for body in chunk:
            async with await client.request("POST", url, JSON, body) as response:
                data = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{response.status}: {data[:200]!r}")

    if connections == 1:
        await one(bodies)
        return
    async with trio.open_nursery() as nursery:
        for c in range(connections):
            nursery.start_soon(one, bodies[c * per : (c + 1) * per])


async def _main(args: argparse.Namespace) -> None:
    os.environ["LLM_PROXY_BENCH_UPSTREAM_KEY"] = UPSTREAM_KEY
    fake = FakeConfig(chunks=args.chunks, record=False)
    async with run_fake_upstream(fake) as upstream:
        text = _MINIMAL.format(upstream=upstream.url, model=MODEL)
        config = parse_config(text)
        stack = build_stack(config, "bench")
        counter = 0
        profiler = cProfile.Profile() if args.profile else None
        async with LiveStack.open(stack, None, config=config) as live:
            results: dict[str, list[float]] = {}
            if args.only in ("http", "relay"):
                async with trio.open_nursery() as nursery:
                    if args.only == "http":
                        url = await nursery.start(
                            partial(
                                serve,
                                live.pipeline,
                                host="127.0.0.1",
                                port=0,
                                handle_signals=False,
                                **live.serve_options(config.server),
                            )
                        )
                    else:
                        relay_client = http11.Client(pool_size=64, trust_env=False)
                        relay = http11.Server(relay_to(upstream.url, relay_client))
                        urls = await nursery.start(partial(relay.serve, host="127.0.0.1", port=0))
                        url = urls[0]
                    target = url + "/v1/chat/completions"
                    async with http11.Client(pool_size=64, trust_env=False) as client:
                        await _http_batch(
                            client, target, _bodies(args.stream, 200, counter), args.connections
                        )
                        counter += 200
                        times = []
                        for _ in range(args.repeats):
                            bodies = _bodies(args.stream, args.requests, counter)
                            counter += args.requests
                            if profiler:
                                profiler.enable()
                            start = time.process_time()
                            await _http_batch(client, target, bodies, args.connections)
                            times.append((time.process_time() - start) / args.requests)
                            if profiler:
                                profiler.disable()
                        results[args.only] = times
                    nursery.cancel_scope.cancel()
            if args.only == "pipeline":
                pipeline = live.pipeline

                async def call(body: bytes) -> None:
                    request = decode_request(body)
                    response = await pipeline.handle(request)
                    async with response:
                        async for _ in response:
                            pass

                for body in _bodies(args.stream, 200, counter):
                    await call(body)
                counter += 200
                times = []
                for _ in range(args.repeats):
                    bodies = _bodies(args.stream, args.requests, counter)
                    counter += args.requests
                    start = time.process_time()
                    for body in bodies:
                        await call(body)
                    times.append((time.process_time() - start) / args.requests)
                results["pipeline"] = times
        for name, times in results.items():
            best = min(times) * 1e6
            median = sorted(times)[len(times) // 2] * 1e6
            print(
                f"{name:8s} {'stream' if args.stream else 'whole':6s} c={args.connections}: "
                f"best {best:7.1f} us/req, median {median:7.1f}"
            )
        if profiler:
            profiler.dump_stats(args.profile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--only", choices=("http", "relay", "pipeline"))
    parser.add_argument("--profile")
    args = parser.parse_args()
    with open(os.devnull, "w") as sink:
        configure_logging("json", "warning", file=sink)
        try:
            # Each variant in a trio run of its own: one after the other in a single run, the
            # second measured far slower (the first one's leftovers).
            for only in ("http", "relay", "pipeline") if args.only is None else (args.only,):
                trio.run(_main, argparse.Namespace(**{**vars(args), "only": only}))
        finally:
            structlog.reset_defaults()


if __name__ == "__main__":
    main()
