"""A small stack built in code: a logging middleware in front of the mock provider.

Run it with `python examples/basic_stack.py`; it streams one answer to the terminal.
"""

from __future__ import annotations

import sys

import trio

from pipeline import Context, Handler, Message, Pipeline, Request, ResponseStream
from providers import MockProvider


async def timing(request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
    """A middleware written as a plain function: report how long the answer took."""
    stream = await call_next(request, ctx)

    def report(end: object) -> None:
        elapsed = (trio.current_time() - ctx.started) * 1000
        print(f"\n[{ctx.request_id}] {request.model}: {end} in {elapsed:.1f} ms", file=sys.stderr)

    return stream.observe(on_end=report)


async def main() -> None:
    provider = MockProvider(echo=False, chunks=12, chunk_delay=0.05)
    async with Pipeline(provider, [timing]) as pipeline:
        request = Request(
            model="mock-1",
            messages=[Message(role="user", content="Say hello")],
            stream=True,
        )
        async with pipeline.stream(request) as stream:
            async for chunk in stream:
                print(chunk.text, end="", flush=True)
        print()


if __name__ == "__main__":
    trio.run(main)
