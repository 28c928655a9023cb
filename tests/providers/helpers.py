"""Scripted upstreams for provider tests: real HTTP/1.1 servers on loopback."""

from __future__ import annotations

import json
import os
import socket
import tracemalloc
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httptools
import trio

from pipeline import Chunk, ResponseStream
from providers import (
    AnthropicProvider,
    CompletionsProvider,
    EventTranslator,
    HTTPProvider,
    OpenAIProvider,
    ServerSentEvent,
)

KEY = "sk-test-0123456789abcdef-secret"
# A key with characters that each escaping changes, and a tail found in every form of it.
ODD_KEY = 'sk-odd\\key"7f3a9c1b'

KINDS: dict[str, type[HTTPProvider]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "completions": CompletionsProvider,
}
# Where each kind's base URL points below the upstream's root.
PATHS = {"openai": "/v1", "anthropic": "", "completions": ""}


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


# -- scripted upstreams on loopback ------------------------------------------------------


class ScriptedBody:
    """A response body the upstream sends in `parts` (chunked, pausing on the trio clock).

    Args:
      parts: the body's pieces, each in a write (and a read of the client) of its own.
      delay: seconds before each piece.
      first_delay: seconds before the first piece (instead of `delay`).
      drop: after the last piece, close the connection without ending the body.
      hang: after the last piece, wait forever instead of ending.

    Attributes:
      sent: how many pieces the upstream wrote.
      closed: whether the client let go of the answer: its pool slot is free, and unless
        the body was sent to its end the connection is closed (by the client, or dropped).
    """

    def __init__(
        self,
        parts: Iterable[bytes],
        *,
        delay: float = 0.0,
        first_delay: float | None = None,
        drop: bool = False,
        hang: bool = False,
    ) -> None:
        self.parts = list(parts)
        self.delay = delay
        self.first_delay = delay if first_delay is None else first_delay
        self.drop = drop
        self.hang = hang
        self.sent = 0
        self.complete = False
        self._socket: trio.socket.SocketType | None = None
        self._upstream: Upstream | None = None

    @property
    def closed(self) -> bool:
        if self._upstream is None or self._upstream.slots_in_use():
            return False
        return self.complete or self._socket is None or _hung_up(self._socket)

    async def send(self, upstream: Upstream, stream: trio.SocketStream) -> bool:
        """Send the body; whether the connection may serve another request."""
        self._upstream = upstream
        self._socket = stream.socket
        for i, part in enumerate(self.parts):
            delay = self.first_delay if i == 0 else self.delay
            if delay:
                await trio.sleep(delay)
            await stream.send_all(b"%x\r\n%s\r\n" % (len(part), part))
            self.sent += 1
        if self.drop:
            self._socket = None
            return False
        if self.hang:
            await trio.sleep_forever()
        # Set before the send: the client may have read the end before this task resumes.
        self.complete = True
        await stream.send_all(b"0\r\n\r\n")
        return True


def _hung_up(sock: trio.socket.SocketType) -> bool:
    """Whether the peer of `sock` closed the connection (a peek that does not block).

    A socket the upstream already closed counts: it does so only once a send failed.
    """
    if sock.fileno() < 0:
        return True
    probe = socket.socket(fileno=os.dup(sock.fileno()))
    try:
        return probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        probe.close()


@dataclass
class Reply:
    """What the upstream answers: a status, headers, and a body (whole, or scripted)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | ScriptedBody = b""


def event_response(
    events: Sequence[Any], *, per_read: int = 1, headers: dict[str, str] | None = None, **body: Any
) -> Reply:
    """A 200 event-stream answer whose body comes `per_read` events at a time."""
    parts = [sse(*events[i : i + per_read]) for i in range(0, len(events), per_read)]
    headers = {"content-type": "text/event-stream", **(headers or {})}
    return Reply(200, headers, ScriptedBody(parts, **body))


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(
        status,
        {"content-type": "application/json", **(headers or {})},
        json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode(),
    )


@dataclass
class Received:
    """A request as the upstream received it (header names lowercase)."""

    method: str
    url: str
    headers: dict[str, str]
    content: bytes


class _RequestParser:
    """llhttp callbacks collecting one request at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.done: list[tuple[bytes, dict[str, str], bytes]] = []
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.done.append((self._url, self._headers, b"".join(self._body)))
        self._url, self._headers, self._body = b"", {}, []


Answer = Reply | Callable[[Received], Awaitable[Reply]]


class Upstream:
    """A scripted HTTP/1.1 upstream on 127.0.0.1 that records requests and plays answers.

    An answer is a `Reply`, or an async function of the `Received` request that returns
    one. Answers are played in order; the last one repeats. The upstream listens from the
    moment it is made (inside a trio run: it serves from a system task, which ends with the
    run), so a test makes one and points a provider at `url`.
    """

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[Received] = []
        self.bodies: list[ScriptedBody] = []
        self.providers: list[HTTPProvider] = []
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        trio.lowlevel.spawn_system_task(self._serve, trio.socket.from_stdlib_socket(listener))

    def slots_in_use(self) -> int:
        """Pool slots the providers pointed at this upstream still hold."""
        return sum(provider.client.statistics().in_use for provider in self.providers)

    async def _serve(self, sock: trio.socket.SocketType) -> None:
        listener = trio.SocketListener(sock)
        async with trio.open_nursery() as nursery:
            while True:
                nursery.start_soon(self._connection, await listener.accept())

    async def _connection(self, stream: trio.SocketStream) -> None:
        requests = _RequestParser()
        try:
            while True:
                while not requests.done:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    requests.parser.feed_data(data)
                url, headers, content = requests.done.pop(0)
                received = Received(
                    requests.parser.get_method().decode(),
                    self.url + url.decode(),
                    headers,
                    content,
                )
                self.requests.append(received)
                answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
                reply = answer if isinstance(answer, Reply) else await answer(received)
                if not await self._reply(stream, reply):
                    return
        except (trio.BrokenResourceError, httptools.HttpParserError):
            pass
        finally:
            await stream.aclose()

    async def _reply(self, stream: trio.SocketStream, reply: Reply) -> bool:
        head = [f"HTTP/1.1 {reply.status} Answer".encode()]
        head += [f"{name}: {value}".encode() for name, value in reply.headers.items()]
        if isinstance(reply.body, bytes):
            head.append(b"content-length: %d" % len(reply.body))
            await stream.send_all(b"\r\n".join(head) + b"\r\n\r\n" + reply.body)
            return True
        self.bodies.append(reply.body)
        head.append(b"transfer-encoding: chunked")
        await stream.send_all(b"\r\n".join(head) + b"\r\n\r\n")
        return await reply.body.send(self, stream)

    @property
    def request(self) -> Received:
        return self.requests[-1]

    @property
    def body(self) -> Any:
        return json.loads(self.requests[-1].content)

    @property
    def stream(self) -> ScriptedBody:
        """The body of the last scripted answer."""
        return self.bodies[-1]


def refused_url() -> str:
    """A loopback URL where nothing listens: connecting is refused."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{unused.getsockname()[1]}"


@contextmanager
def unresponsive_url() -> Iterator[str]:
    """A loopback URL whose listen backlog is full: connecting hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            for filler in fillers:
                filler.close()


def held_while_feeding(translator: EventTranslator, events: Iterable[ServerSentEvent]) -> int:
    """Bytes still allocated after `translator` was fed `events` (made one at a time)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for event in events:
            translator.feed(event)
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


async def read_into(stream: ResponseStream, chunks: list[Chunk]) -> None:
    """Read `stream` to its end (or its error), keeping each chunk in `chunks`."""
    async for chunk in stream:
        chunks.append(chunk)


def make_provider(
    kind: str, upstream: Upstream | str, *, api_key: str | None = KEY, **kwargs: Any
) -> HTTPProvider:
    """A provider of `kind` pointed at `upstream` (or at a root URL)."""
    url = upstream if isinstance(upstream, str) else upstream.url
    provider = KINDS[kind](url + PATHS[kind], api_key=api_key, **kwargs)
    if isinstance(upstream, Upstream):
        upstream.providers.append(provider)
    return provider


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
