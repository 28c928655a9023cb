"""Scripted upstreams for provider tests: httpx.MockTransport handlers and a raw TCP server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from functools import partial
from typing import Any

import httpx
import trio

from pipeline import Chunk, ResponseStream
from providers import AnthropicProvider, CompletionsProvider, HTTPProvider, OpenAIProvider

KEY = "sk-test-0123456789abcdef-secret"

KINDS: dict[str, type[HTTPProvider]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "completions": CompletionsProvider,
}
BASE_URLS = {
    "openai": "https://upstream.test/v1",
    "anthropic": "https://upstream.test",
    "completions": "https://upstream.test",
}


# -- event streams -------------------------------------------------------------------------


def sse(*events: Any) -> bytes:
    """Encode events: a dict or str is one `data:` event; a (name, payload) pair is named."""
    out = []
    for event in events:
        name = None
        if isinstance(event, tuple):
            name, event = event
        data = event if isinstance(event, str) else json.dumps(event)
        out.append((f"event: {name}\n" if name else "") + f"data: {data}\n\n")
    return "".join(out).encode()


def openai_chunk(
    content: str | None = None,
    *,
    role: str | None = None,
    finish: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    chunk: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-test",
        "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage:
        chunk["usage"] = usage
    return chunk


def openai_text_events(*texts: str, finish: bool = True) -> list[Any]:
    events: list[Any] = [openai_chunk("", role="assistant")]
    events += [openai_chunk(text) for text in texts]
    if finish:
        events.append(openai_chunk(finish="stop"))
        events.append(
            openai_chunk(usage={"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12})
        )
        events.append("[DONE]")
    return events


def anthropic_event(name: str, **fields: Any) -> tuple[str, dict[str, Any]]:
    """A named Messages API event, its `type` field set to its name."""
    return (name, {"type": name, **fields})


def anthropic_start(message_id: str = "msg_1", model: str = "claude-test", **usage: int) -> Any:
    usage = usage or {"input_tokens": 5, "output_tokens": 1}
    message = {"id": message_id, "type": "message", "role": "assistant", "model": model}
    return anthropic_event("message_start", message={**message, "content": [], "usage": usage})


def anthropic_delta(index: int, kind: str, **fields: Any) -> Any:
    return anthropic_event("content_block_delta", index=index, delta={"type": kind, **fields})


def anthropic_stop(reason: str, output_tokens: int) -> list[Any]:
    """A message's last two events: its stop reason with the output usage, then the stop."""
    return [
        anthropic_event(
            "message_delta",
            delta={"stop_reason": reason, "stop_sequence": None},
            usage={"output_tokens": output_tokens},
        ),
        anthropic_event("message_stop"),
    ]


def anthropic_text_events(*texts: str, finish: bool = True) -> list[Any]:
    events: list[Any] = [
        anthropic_start(),
        anthropic_event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
    ]
    events += [anthropic_delta(0, "text_delta", text=text) for text in texts]
    if finish:
        events += [anthropic_event("content_block_stop", index=0), *anthropic_stop("end_turn", 7)]
    return events


def completions_text_events(*texts: str, finish: bool = True) -> list[Any]:
    events: list[Any] = [{"text": text, "finish_reason": None} for text in texts]
    if finish:
        events.append({"text": "", "finish_reason": "stop"})
        events.append("[DONE]")
    return events


TEXT_EVENTS: dict[str, Callable[..., list[Any]]] = {
    "openai": openai_text_events,
    "anthropic": anthropic_text_events,
    "completions": completions_text_events,
}

ERROR_BODIES: dict[str, Callable[[str], dict[str, Any]]] = {
    "openai": lambda message: {
        "error": {"message": message, "type": "invalid_request_error", "code": "bad", "param": None}
    },
    "anthropic": lambda message: {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": message},
    },
    "completions": lambda message: {"error": {"message": message}},
}


# -- httpx.MockTransport upstreams ---------------------------------------------------------


class ScriptedBody(httpx.AsyncByteStream):
    """A response body that yields `parts` (pausing on the trio clock) and records closing.

    Args:
      parts: the body's pieces, as the client's reads will see them.
      delay: seconds before each piece.
      first_delay: seconds before the first piece (instead of `delay`).
      error: raised after the last piece (a dropped connection).
      hang: after the last piece, wait forever instead of ending.
    """

    def __init__(
        self,
        parts: Iterable[bytes],
        *,
        delay: float = 0.0,
        first_delay: float | None = None,
        error: Exception | None = None,
        hang: bool = False,
    ) -> None:
        self.parts = list(parts)
        self.delay = delay
        self.first_delay = delay if first_delay is None else first_delay
        self.error = error
        self.hang = hang
        self.closed = False
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i, part in enumerate(self.parts):
            delay = self.first_delay if i == 0 else self.delay
            if delay:
                await trio.sleep(delay)
            self.sent += 1
            yield part
        if self.error is not None:
            raise self.error
        if self.hang:
            await trio.sleep_forever()

    async def aclose(self) -> None:
        self.closed = True


def event_response(
    events: Sequence[Any], *, per_read: int = 1, headers: dict[str, str] | None = None, **body: Any
) -> httpx.Response:
    """A 200 event-stream answer whose body comes `per_read` events at a time."""
    parts = [sse(*events[i : i + per_read]) for i in range(0, len(events), per_read)]
    return httpx.Response(
        200,
        headers={"content-type": "text/event-stream", **(headers or {})},
        stream=ScriptedBody(parts, **body),
    )


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(status, json=data, headers=headers)


Answer = httpx.Response | Exception | Callable[[httpx.Request], Any]


class Upstream:
    """An httpx.MockTransport handler that records requests and plays answers in order.

    An answer is a response, an exception to raise (a transport failure), or an async
    function of the request. The last answer repeats.
    """

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.bodies: list[ScriptedBody] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            answer = await answer(request)
        assert isinstance(answer, httpx.Response)
        if isinstance(answer.stream, ScriptedBody):
            # Keep it: the client wraps the response's stream once we return it.
            self.bodies.append(answer.stream)
        return answer

    @property
    def request(self) -> httpx.Request:
        return self.requests[-1]

    @property
    def body(self) -> Any:
        return json.loads(self.requests[-1].content)

    @property
    def stream(self) -> ScriptedBody:
        """The body of the last scripted response."""
        return self.bodies[-1]


async def read_into(stream: ResponseStream, chunks: list[Chunk]) -> None:
    """Read `stream` to its end (or its error), keeping each chunk in `chunks`."""
    async for chunk in stream:
        chunks.append(chunk)


def make_provider(
    kind: str, upstream: Upstream, *, api_key: str | None = KEY, **kwargs: Any
) -> HTTPProvider:
    return KINDS[kind](
        BASE_URLS[kind], api_key=api_key, transport=httpx.MockTransport(upstream), **kwargs
    )


# -- a raw HTTP/1.1 server on a real socket ------------------------------------------------


class RawUpstream:
    """A tiny HTTP/1.1 server on 127.0.0.1 that answers with a chunked event stream.

    It writes `events` and then, with `finish`, ends the body and waits for the next
    request on the same connection (keep-alive); with `drop`, it closes the connection
    mid-body; otherwise it stalls until the client hangs up. It records the connections it
    saw and when each was closed by the client.
    """

    def __init__(self, events: Sequence[Any], *, finish: bool = False, drop: bool = False):
        self.events = [sse(event) for event in events]
        self.finish = finish
        self.drop = drop
        self.connections = 0
        self.requests = 0
        self.hangups = 0
        self.sent = trio.Event()
        self.hung_up = trio.Event()
        self.port = 0

    async def start(self, nursery: trio.Nursery) -> str:
        """Listen on a free loopback port; return the base URL."""
        listeners = await nursery.start(partial(trio.serve_tcp, self._serve, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += await stream.receive_some(65536)
                buffer = buffer[length:]
                self.requests += 1
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                )
                for event in self.events:
                    await stream.send_all(b"%x\r\n%s\r\n" % (len(event), event))
                self.sent.set()
                if self.drop:
                    return
                if not self.finish:
                    while await stream.receive_some(65536):
                        pass
                    return
                await stream.send_all(b"0\r\n\r\n")
        except trio.BrokenResourceError:
            pass
        finally:
            self.hangups += 1
            self.hung_up.set()
            await stream.aclose()
