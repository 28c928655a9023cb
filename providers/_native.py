"""Passing a client's own API through: its body out as sent, the upstream's events back.

When a request came through a door whose API the upstream speaks (`Request.api` in a
provider's `native_apis`), the provider sends `request.native` (the body as the client
sent it, with the pipeline's model and stream) instead of translating the typed request,
and each chunk it makes carries the upstream's event in `Chunk.raw`, so the door writes
what the upstream wrote, unknown fields included. The typed fields are still filled in
for the middlewares (usage, finish reason, text).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from pipeline import Chunk, Request, StreamError

from ._sse import ServerSentEvent

__all__ = ["RawEvents", "carries_nothing", "decode_answer", "frame", "native_body"]

_encoder = msgspec.json.Encoder()
T = TypeVar("T")


def native_body(request: Request, *, drop: tuple[str, ...] = (), **fields: Any) -> bytes:
    """The client's body as sent, with the pipeline's `model` and the given fields set.

    Args:
      request: a request that came through a door (`request.native` set).
      drop: top-level fields to leave out.
      **fields: top-level fields to set (the `stream` flag, for one).
    """
    native = request.native
    body: dict[str, Any] = dict(native.fields) if native is not None else {}
    for name in drop:
        body.pop(name, None)
    body["model"] = request.model
    body.update(fields)
    return _encoder.encode(body)


def frame(event: ServerSentEvent) -> bytes:
    """An event framed again as it came: its name (unless the default) and its data."""
    data = event.data.encode()
    if event.event == "message":
        return b"data: " + data + b"\n\n"
    return b"event: " + event.event.encode() + b"\ndata: " + data + b"\n\n"


def carries_nothing(chunk: Chunk) -> bool:
    """Whether a chunk has nothing of the answer (an opening role chunk, `message_start`)."""
    if chunk.usage is not None:
        return False
    for choice in chunk.choices:
        delta = choice.delta
        if (
            delta.content
            or delta.tool_calls
            or delta.refusal
            or delta.reasoning_content
            or choice.finish_reason is not None
            or choice.logprobs is not None
        ):
            return False
    return True


class RawEvents:
    """Puts each upstream event on the chunk a translator makes of it.

    Before the answer's first real piece, events that carry nothing are held and ride on
    the first chunk that carries something (the stream holds such chunks back until then,
    so that a failure before it can still be retried); after it, an event the translator
    makes no chunk of gets an empty chunk of its own, so that it is still forwarded.

    Args:
      empty: makes an empty chunk (the answer's id, time and model) for such an event.
    """

    __slots__ = ("_empty", "_held", "_started")

    def __init__(self, empty: Callable[[], Chunk]) -> None:
        self._empty = empty
        self._held: list[bytes] = []
        self._started = False

    def attach(self, chunk: Chunk | None, event: ServerSentEvent) -> Chunk | None:
        """The chunk to hand on for `event`, carrying the event itself."""
        raw = frame(event)
        if not self._started:
            if chunk is None or carries_nothing(chunk):
                self._held.append(raw)
                return chunk
            self._started = True
            return self._with(chunk, raw)
        if chunk is None:
            chunk = self._empty()
        chunk.raw = raw if chunk.raw is None else chunk.raw + raw
        return chunk

    def flush(self, chunk: Chunk | None) -> Chunk | None:
        """At the end: any events still held ride on `chunk` (an empty one if None)."""
        if not self._held:
            return chunk
        self._started = True
        return self._with(chunk if chunk is not None else self._empty(), b"")

    def _with(self, chunk: Chunk, raw: bytes) -> Chunk:
        held = b"".join(self._held)
        self._held.clear()
        chunk.raw = held + raw
        return chunk


def decode_answer(
    data: bytes, decoder: msgspec.json.Decoder[T], *, provider: str, redact: Callable[[str], str]
) -> T:
    """Decode a whole answer's body, as `HTTPProvider.fetch` does, keeping the body.

    Raises:
      StreamError: the body is not what `decoder` expects (retryable).
    """
    try:
        return decoder.decode(data)
    except msgspec.MsgspecError as exc:
        message = f"upstream `{provider}` sent a malformed answer: {exc}"
        raise StreamError(redact(message), provider=provider, retryable=True) from None
