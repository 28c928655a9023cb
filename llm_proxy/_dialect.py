"""What a door needs to speak its API: the `Dialect` and its per-stream `EventEncoder`.

A door decodes its request into the pipeline's `Request` (so that every middleware sees one
model of the call), and encodes what comes back in its own API: a collected answer as JSON,
a stream as events, errors in its own error shape and status. Events that an upstream sent
in the door's own API (`Chunk.raw`) are written as they came; everything else is
translated from the typed chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pipeline import ChatCompletion, Chunk, ProxyError, Request

__all__ = ["Dialect", "EventEncoder"]


class EventEncoder(Protocol):
    """Encodes one stream's chunks as the door's events; one per stream (it keeps state)."""

    def event(self, chunk: Chunk) -> bytes:
        """The events (framed; maybe none, b"") this chunk becomes."""
        ...

    def done(self) -> bytes:
        """What ends a stream that finished (OpenAI's `data: [DONE]`, Anthropic's
        `message_delta` and `message_stop`)."""
        ...


def _own_status(error: ProxyError) -> int:
    return error.status


class Dialect:
    """How a door decodes its request and encodes answers, stream events and errors.

    Attributes:
      name: the door's name, as `Context.door`, the access log and the metrics give it.
      decode: the request body into the pipeline's `Request`.
      events: a new `EventEncoder` for the stream answering a request.
      whole: a collected answer to a request as the JSON body of a 200.
      error: an error as the JSON body of an error response.
      error_event: the event that ends a stream broken after it started.
      status: the HTTP status an error is answered with (by default its own).
    """

    __slots__ = ("decode", "error", "error_event", "events", "name", "status", "whole")

    def __init__(
        self,
        *,
        name: str,
        decode: Callable[[bytes], Request],
        events: Callable[[Request], EventEncoder],
        whole: Callable[[ChatCompletion, Request], bytes],
        error: Callable[[ProxyError], bytes],
        error_event: Callable[[ProxyError], bytes],
        status: Callable[[ProxyError], int] = _own_status,
    ) -> None:
        self.name = name
        self.decode = decode
        self.events = events
        self.whole = whole
        self.error = error
        self.error_event = error_event
        self.status = status
