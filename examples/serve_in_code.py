"""Serve a stack built in code: a router over two mock models, behind one middleware.

Run it with `python examples/serve_in_code.py [PORT]` (0 picks a free port) and talk to it
as to OpenAI:

    curl http://127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' \\
        -d '{"model": "friendly", "messages": [{"role": "user", "content": "Hi"}]}'

Ctrl-C (or SIGTERM) lets running answers finish, then stops.
"""

from __future__ import annotations

import sys
from functools import partial

import trio

from llm_proxy import serve
from pipeline import Context, Handler, Pipeline, Request, ResponseStream, Route, Router
from providers import MockProvider


async def upstream_header(request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
    """A middleware: tell the client which upstream model answered, in a response header."""
    stream = await call_next(request, ctx)
    ctx.response_headers["x-upstream-model"] = ctx.upstream_model or ""
    return stream


def build_pipeline() -> Pipeline:
    """Two model names clients may ask for, each routed to its own provider."""
    router = Router(
        {
            "friendly": Route(MockProvider("Happy to help!", chunks=4), "friendly-v2"),
            "echo": Route(MockProvider(echo=True), "echo"),
        }
    )
    return Pipeline(router, [upstream_header])


async def main(port: int) -> None:
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(serve, build_pipeline(), host="127.0.0.1", port=port))
        print(f"serving on {url}/v1 - models: friendly, echo (Ctrl-C to stop)", flush=True)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 8080)
