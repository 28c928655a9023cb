"""What the fake answers, independent of any API's wire shape.

Each API module decodes a request into a `Call`, and renders the answer this module makes
up (deterministic text or a tool call, token counts, finish) as a `Reply`: the bytes to
write, grouped into frames that the server sends one delay apart.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

import msgspec

from ._config import FakeConfig

__all__ = [
    "Answer",
    "Api",
    "BadRequest",
    "CHARS_PER_TOKEN",
    "Call",
    "Reply",
    "ToolUse",
    "answer",
    "decode_body",
    "encoder",
    "error_reply",
    "fake_text",
    "split",
    "stream_reply",
    "tokens",
    "tool_arguments",
    "whole_reply",
]

CHARS_PER_TOKEN = 4
_SENTENCE = "The quick brown fox jumps over the lazy dog while the fake upstream streams. "

_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
)

encoder = msgspec.json.Encoder()


def fake_text(length: int) -> str:
    """The fake's deterministic answer of `length` characters (a sentence, repeated)."""
    repeats = length // len(_SENTENCE) + 1
    return (_SENTENCE * repeats)[:length]


def tokens(chars: int) -> int:
    """The fake's token count for a number of characters: one per four, rounded up."""
    return (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def split(text: str, pieces: int) -> list[str]:
    """Split text into `pieces` nearly equal, non-empty parts (fewer if it is shorter)."""
    pieces = min(pieces, len(text))
    size = len(text)
    return [text[i * size // pieces : (i + 1) * size // pieces] for i in range(pieces)]


class ToolUse(NamedTuple):
    """A tool call the fake makes: the tool's name and its arguments as JSON text."""

    name: str
    arguments: str


class Call(NamedTuple):
    """The facts of a request that shape the answer (hashable: answers are cached by it)."""

    model: str
    stream: bool
    prompt_tokens: int
    limit: int | None = None
    include_usage: bool = False
    tool: ToolUse | None = None
    shape: tuple[Any, ...] = ()
    """Facts only one API needs (embeddings: input count, dimensions, encoding)."""


class Answer(NamedTuple):
    """What the fake answers a call with, before any API shapes it.

    `text` is the answer's text, or the tool call's arguments (JSON) when `call.tool` is
    set; `pieces` are the stream's deltas; `reason` is why it ended: `stop`, `length` (the
    call's token limit cut it) or `tool`.
    """

    text: str
    pieces: list[str]
    reason: str
    completion_tokens: int


def answer(call: Call, config: FakeConfig) -> Answer:
    """The answer to a call: a tool call, or `text_length` characters cut at its limit."""
    if call.tool is not None:
        arguments = call.tool.arguments
        return Answer(arguments, split(arguments, config.chunks), "tool", tokens(len(arguments)))
    text = fake_text(config.text_length)
    reason = "stop"
    if call.limit is not None and tokens(len(text)) > call.limit:
        text = text[: call.limit * CHARS_PER_TOKEN]
        reason = "length"
    return Answer(text, split(text, config.chunks), reason, tokens(len(text)))


_SAMPLES: dict[str, Any] = {
    "string": "fake",
    "integer": 1,
    "number": 1.5,
    "boolean": True,
    "array": [],
    "object": {},
}


def tool_arguments(schema: dict[str, Any] | None) -> dict[str, Any]:
    """Arguments that fit a JSON schema's top-level properties: a sample value for each.

    A property's first `enum` value wins; otherwise a sample of its `type`; otherwise null.
    """
    properties = (schema or {}).get("properties") or {}
    arguments = {}
    for name, spec in properties.items():
        spec = spec if isinstance(spec, dict) else {}
        kind = spec.get("type")
        if spec.get("enum"):
            arguments[name] = spec["enum"][0]
        else:
            arguments[name] = _SAMPLES.get(kind) if isinstance(kind, str) else None
    return arguments


class Reply(NamedTuple):
    """A complete answer: status, headers and the body, as frames of writes.

    A frame is what the server writes after one delay: the first frame after `ttft`, each
    later one after `chunk_delay`. Each item of a frame is one event (one send).
    """

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    frames: tuple[tuple[bytes, ...], ...]
    stream: bool


def whole_reply(body: bytes, status: int = 200, retry_after: int | str | None = None) -> Reply:
    """A non-streamed JSON answer with its `Content-Length`."""
    headers = [_JSON, (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    return Reply(status, tuple(headers), ((body,),), stream=False)


def error_reply(body: bytes, status: int, config: FakeConfig | None = None) -> Reply:
    """An error answer; `config` supplies `error_body` and `retry_after` when it is a knob."""
    if config is None:
        return whole_reply(body, status)
    if config.error_body is not None:
        body = config.error_body.encode()
    return whole_reply(body, status, config.retry_after)


class BadRequest(Exception):
    """The request cannot be answered; `body` is the API-shaped error to send."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


class Api(Hashable, Protocol):
    """One imitated API: how it checks keys, reads requests, and shapes answers and errors."""

    def check_key(self, headers: Mapping[str, str], key: str) -> BadRequest | None:
        """The error to answer when the headers do not carry `key` (None when they do)."""
        ...

    def decode(self, body: bytes, config: FakeConfig) -> Call:
        """The call a request body makes; raises `BadRequest` if the API would reject it."""
        ...

    def error(self, status: int, message: str) -> bytes:
        """An error body in the API's shape for an error status."""
        ...

    def render(self, call: Call, config: FakeConfig) -> Reply:
        """The answer to a call, streamed or whole."""
        ...


T = TypeVar("T")


def decode_body(decoder: msgspec.json.Decoder[T], body: bytes, api: Api) -> T:
    """Decode a request body, or raise the 400 the API answers to one it cannot read."""
    try:
        return decoder.decode(body)
    except msgspec.MsgspecError as exc:
        raise BadRequest(400, api.error(400, f"Invalid request body: {exc}")) from None


def stream_reply(
    head: Sequence[bytes],
    deltas: Sequence[bytes],
    tail: Sequence[bytes],
    *,
    config: FakeConfig,
    malformed: bytes,
    error: bytes,
) -> Reply:
    """A streamed answer: head events, one frame per delta, tail events; knobs applied.

    `stream_error_after` cuts the deltas and replaces the tail with the `error` event;
    `malformed_after` puts the `malformed` event right after that many deltas.
    """
    if config.stream_error_after is not None:
        deltas = deltas[: config.stream_error_after]
        tail = (error,)
    groups = [[delta] for delta in deltas] or [[]]
    if config.malformed_after is not None:
        after = min(config.malformed_after, len(deltas))
        if after:
            groups[after - 1].append(malformed)
        else:
            groups[0].insert(0, malformed)
    groups[0][:0] = head
    groups[-1].extend(tail)
    return Reply(200, _SSE_HEADERS, tuple(tuple(group) for group in groups), stream=True)
