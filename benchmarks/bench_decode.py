"""Decoding cost per streamed chunk for each provider, and our SSE parser against httpx-sse.

Realistic OpenAI, Anthropic and completions streams (`--chunks` content chunks, then the
finish and usage) are generated in memory and fed through each provider's decode path (the
`SSEDecoder` and the provider's event translator, exactly as its stream uses them) in reads
of realistic sizes: one event per read (tokens spaced in time, the usual case) and 4 KiB
reads (a burst). A second table runs whole requests through `provider.execute` over
a loopback `http11` server, next to reading the same body with `http11.Client` alone, so
the decode cost can be seen beside the client's own cost, with no context deadline and
with one nearer than the provider's timeout (which puts each read under a cancel scope).

The parser comparison feeds the OpenAI stream to `SSEDecoder` and to httpx-sse's decoders
(behind an incremental UTF-8 decoder, as `aiter_sse` does), and checks httpx-sse against
the event-stream rules on edge cases and on randomly split random streams.

    python -m benchmarks.bench_decode [--chunks 200] [--repeats 7] [--requests 200]
"""

from __future__ import annotations

import argparse
import codecs
import gc
import json
import random
import statistics
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import trio
from httpx_sse._decoders import SSEDecoder as HttpxSSEDecoder
from httpx_sse._decoders import SSELineDecoder

import http11
from pipeline import Context, Message, Request
from providers import (
    AnthropicProvider,
    CompletionsProvider,
    EventTranslator,
    HTTPProvider,
    OpenAIProvider,
    ServerSentEvent,
    SSEDecoder,
)
from providers._anthropic import _AnthropicEvents
from providers._completions import _CompletionEvents, render_prompt
from providers._openai import _OpenAIEvents

WORDS = (
    " The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".",
    " Streaming", " answers", " arrive", " token", " by", " token", ",", " é", "→", " 世界",
)  # fmt: skip
BURST = 4096
REQUEST = Request(
    model="bench-model", messages=[Message(role="user", content="Tell me a story.")], stream=True
)


def _compact(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def openai_events(chunks: int) -> list[bytes]:
    """An OpenAI stream as the API sends it: role, content chunks, finish, usage, [DONE]."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
            "object": "chat.completion.chunk",
            "created": 1741570283,
            "model": "gpt-4o-2024-08-06",
            "service_tier": "default",
            "system_fingerprint": "fp_eb9dce56a8",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            "usage": None,
        }

    payloads = [chunk({"role": "assistant", "content": "", "refusal": None})]
    payloads += [chunk({"content": WORDS[i % len(WORDS)]}) for i in range(chunks)]
    payloads.append(chunk({}, "stop"))
    usage = chunk({})
    usage["choices"] = []
    usage["usage"] = {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}
    payloads.append(usage)
    events = [f"data: {_compact(p)}\n\n".encode() for p in payloads]
    return [*events, b"data: [DONE]\n\n"]


def anthropic_events(chunks: int) -> list[bytes]:
    """An Anthropic Messages stream: message_start, a text block, message_delta, stop."""

    def event(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {_compact({'type': name, **data})}\n\n".encode()

    message: dict[str, Any] = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-20250514",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 1},
    }
    events = [
        event("message_start", {"message": message}),
        event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        event("ping", {}),
    ]
    events += [
        event(
            "content_block_delta",
            {"index": 0, "delta": {"type": "text_delta", "text": WORDS[i % len(WORDS)]}},
        )
        for i in range(chunks)
    ]
    events += [
        event("content_block_stop", {"index": 0}),
        event(
            "message_delta",
            {
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": chunks},
            },
        ),
        event("message_stop", {}),
    ]
    return events


def completions_events(chunks: int) -> list[bytes]:
    """A completions stream: text events, a final one with the finish reason, [DONE]."""
    payloads = [{"text": WORDS[i % len(WORDS)], "finish_reason": None} for i in range(chunks)]
    payloads.append({"text": "", "finish_reason": "stop"})
    events = [f"data: {_compact(p)}\n\n".encode() for p in payloads]
    return [*events, b"data: [DONE]\n\n"]


STREAMS: dict[str, Callable[[int], list[bytes]]] = {
    "openai": openai_events,
    "anthropic": anthropic_events,
    "completions": completions_events,
}
PROVIDERS: dict[str, type[HTTPProvider]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "completions": CompletionsProvider,
}


def translator(kind: str) -> EventTranslator:
    if kind == "openai":
        return _OpenAIEvents(REQUEST)
    if kind == "anthropic":
        return _AnthropicEvents(REQUEST)
    return _CompletionEvents(REQUEST, render_prompt(REQUEST.messages))


def bursts(events: list[bytes], size: int = BURST) -> list[bytes]:
    raw = b"".join(events)
    return [raw[i : i + size] for i in range(0, len(raw), size)]


def decode_stream(kind: str, reads: Iterable[bytes]) -> int:
    """Decode one stream as `_EventStream` does, without the I/O; return the chunks made."""
    decoder = SSEDecoder()
    events = translator(kind)
    made = 0
    for read in reads:
        for event in decoder.feed(read):
            if events.done:
                break
            if events.feed(event) is not None:
                made += 1
    for event in decoder.close():
        if not events.done and events.feed(event) is not None:
            made += 1
    if events.finish() is not None:
        made += 1
    return made


def median_seconds(fn: Callable[[], object], repeats: int, loops: int) -> float:
    """Median seconds per call of `fn` over `repeats` batches of `loops` calls."""
    for _ in range(min(loops, 20)):
        fn()
    samples = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter() - start) / loops)
    return statistics.median(samples)


def decode_rows(chunks: int, repeats: int, loops: int) -> list[dict[str, Any]]:
    rows = []
    for kind, make in STREAMS.items():
        events = make(chunks)
        for reads_label, reads in (("one event", events), ("4 KiB", bursts(events))):
            made = decode_stream(kind, reads)
            seconds = median_seconds(partial(decode_stream, kind, reads), repeats, loops)
            rows.append(
                {
                    "provider": kind,
                    "reads": reads_label,
                    "bytes_per_read": sum(map(len, reads)) / len(reads),
                    "chunks": made,
                    "us_per_chunk": seconds * 1e6 / made,
                }
            )
    return rows


# -- parser comparison ---------------------------------------------------------------------


def ours(reads: Iterable[bytes]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    return [event for read in reads for event in decoder.feed(read)] + decoder.close()


def httpx_sse(reads: Iterable[bytes]) -> list[ServerSentEvent]:
    """httpx-sse's line and event decoders, fed as `aiter_sse` feeds them."""
    text = codecs.getincrementaldecoder("utf-8")(errors="replace")
    lines = SSELineDecoder()
    decoder = HttpxSSEDecoder()
    events = []

    def emit(line: str) -> None:
        event = decoder.decode(line.rstrip("\n"))
        if event is not None:
            events.append(ServerSentEvent(event.data, event.event, event.id, event.retry))

    for read in reads:
        piece = text.decode(read)
        if piece:
            for line in lines.decode(piece):
                emit(line)
    for line in lines.flush():
        emit(line)
    return events


EDGE_CASES: dict[str, list[bytes]] = {
    "CRLF split across reads": [b"data: a\r", b"\ndata: b\n\n"],
    "multi-line data": [b"data: one\ndata: two\n\n"],
    "leading BOM": [b"\xef\xbb\xbfdata: x\n\n"],
    "BOM split across reads": [b"\xef\xbb", b"\xbfdata: x\n\n"],
    "UTF-8 split across reads": [b"data: \xe4\xb8", b"\x96\n\n"],
    "event without data is not dispatched": [b"event: ping\n\ndata: x\n\n"],
    "id then blank lines": [b"id: 1\ndata: a\n\n\n\n"],
    "retry with a sign": [b"retry: +5\ndata: x\n\n"],
    "final event without blank line": [b"data: a\n\ndata: last"],
    "field without colon": [b"data\n\n"],
    "two spaces after colon": [b"data:  x\n\n"],
}


def random_stream(rng: random.Random) -> bytes:
    lines = [
        "data: " + rng.choice(["{}", "x", "é→", ""]),
        "event: " + rng.choice(["delta", "", "ping"]),
        "id: " + rng.choice(["1", "a\0b", ""]),
        "retry: " + rng.choice(["100", "+1", "-2", "1x"]),
        ": comment",
        "",
        "",
        "data",
    ]
    text = "".join(rng.choice(lines) + rng.choice(["\n", "\r", "\r\n"]) for _ in range(12))
    raw = text.encode()
    return b"\xef\xbb\xbf" + raw if rng.random() < 0.2 else raw


def conformance(samples: int = 2000) -> tuple[list[str], int]:
    """httpx-sse's failing edge cases, and how many random split streams it decodes wrong."""
    failing = [name for name, reads in EDGE_CASES.items() if httpx_sse(reads) != ours(reads)]
    rng = random.Random(0)
    wrong = 0
    for _ in range(samples):
        raw = random_stream(rng)
        cuts = sorted(rng.sample(range(len(raw) + 1), min(4, len(raw) + 1)))
        reads = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        if httpx_sse(reads) != ours(reads):
            wrong += 1
    return failing, wrong


def parser_rows(chunks: int, repeats: int, loops: int) -> list[dict[str, Any]]:
    rows = []
    events = openai_events(chunks)
    for reads_label, reads in (("one event", events), ("4 KiB", bursts(events))):
        for name, parse in (("SSEDecoder (ours)", ours), ("httpx-sse 0.4", httpx_sse)):
            count = len(parse(reads))
            seconds = median_seconds(partial(parse, reads), repeats, loops)
            rows.append(
                {
                    "parser": name,
                    "reads": reads_label,
                    "events": count,
                    "us_per_event": seconds * 1e6 / count,
                }
            )
    return rows


# -- whole requests over loopback ---------------------------------------------------------


async def time_requests(run: Callable[[], Any], requests: int, repeats: int) -> float:
    for _ in range(min(requests, 20)):
        await run()
    samples = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        for _ in range(requests):
            await run()
        samples.append((time.perf_counter() - start) / requests)
    return statistics.median(samples)


async def request_rows(chunks: int, repeats: int, requests: int) -> list[dict[str, Any]]:
    rows = []
    bodies = {kind: make(chunks) for kind, make in STREAMS.items()}

    async def answer(request: http11.Request, responder: http11.Responder) -> None:
        reads = bodies[request.target.split(b"/")[1].decode()]  # /<kind>/...
        await responder.start(200, [(b"content-type", b"text/event-stream")])
        for read in reads:
            await responder.write(read)
        await responder.end()

    server = http11.Server(answer)
    async with trio.open_nursery() as nursery:
        [url] = await nursery.start(server.serve)
        client = http11.Client(trust_env=False)
        for kind, reads in bodies.items():
            provider = PROVIDERS[kind](f"{url}/{kind}")

            async def raw_client(target: str = f"{url}/{kind}") -> None:
                response = await client.request(b"POST", target, [], b"{}")
                while await response.receive_some():
                    pass

            async def through_provider(p: HTTPProvider = provider, near: bool = False) -> None:
                # A deadline nearer than the provider's timeout: every read uses a scope.
                ctx = Context(deadline=trio.current_time() + 30 if near else None)
                stream = await p.execute(REQUEST, ctx)
                async with stream:
                    async for _ in stream:
                        pass

            made = decode_stream(kind, reads)
            base = await time_requests(raw_client, requests, repeats)
            for deadline, near in (("none", False), ("in 30 s", True)):
                full = await time_requests(partial(through_provider, near=near), requests, repeats)
                rows.append(
                    {
                        "provider": kind,
                        "ctx.deadline": deadline,
                        "reads": len(reads),
                        "chunks": made,
                        "client_us_per_request": base * 1e6,
                        "provider_us_per_request": full * 1e6,
                        "added_us_per_chunk": (full - base) * 1e6 / made,
                    }
                )
            await provider.aclose()
        await client.aclose()
        server.shutdown()
    return rows


# -- report --------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=200, help="content chunks per stream")
    parser.add_argument("--repeats", type=int, default=7, help="timed batches (median reported)")
    parser.add_argument("--loops", type=int, default=200, help="streams decoded per batch")
    parser.add_argument("--requests", type=int, default=100, help="requests per batch")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    decode = decode_rows(args.chunks, args.repeats, args.loops)
    parsers = parser_rows(args.chunks, args.repeats, args.loops)
    failing, wrong = conformance()
    requests = trio.run(request_rows, args.chunks, args.repeats, args.requests)
    if args.json:
        report = {
            "decode": decode,
            "parsers": parsers,
            "httpx_sse_failing_cases": failing,
            "httpx_sse_wrong_random": wrong,
            "requests": requests,
        }
        print(json.dumps(report, indent=2))
        return
    print("Decode path (SSE + translation), per chunk:\n")
    print(table(decode))
    print("\nSSE parsers on the OpenAI stream, per event:\n")
    print(table(parsers))
    print(f"\nhttpx-sse differs from the event-stream rules on: {', '.join(failing) or 'nothing'}")
    print(f"httpx-sse decodes {wrong} of 2000 random split streams differently")
    print("\nWhole requests over loopback (http11 server and client):\n")
    print(table(requests))


if __name__ == "__main__":
    main()
