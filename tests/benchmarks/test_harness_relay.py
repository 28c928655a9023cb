"""The bare relay: forwards a request as it is and copies the answer back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import msgspec

from benchmarks._bench._relay import Relay
from benchmarks.fake_upstream import FakeUpstream

from ..helpers import parse_sse
from .bodies import CHAT, chat_body


async def relay(
    upstream: FakeUpstream, body: bytes, headers: list[tuple[bytes, bytes]]
) -> list[dict[str, Any]]:
    """Call the relay app once, as hypercorn would; returns what it sent."""
    sent: list[dict[str, Any]] = []
    parts = [
        {"type": "http.request", "body": body[:10], "more_body": True},
        {"type": "http.request", "body": body[10:], "more_body": False},
    ]

    async def receive() -> Mapping[str, Any]:
        return parts.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": CHAT, "headers": headers}
    async with httpx.AsyncClient() as client:
        await Relay(upstream.url, client)(scope, receive, send)
    return sent


HEADERS = [
    (b"host", b"proxy.example"),
    (b"content-type", b"application/json"),
    (b"content-length", b"999"),
    (b"authorization", b"Bearer sk-relay"),
]


async def test_a_whole_answer_keeps_its_status_type_and_length(fake_upstream: FakeUpstream) -> None:
    sent = await relay(fake_upstream, msgspec.json.encode(chat_body("hi")), HEADERS)

    start, *pieces = sent
    body = b"".join(piece["body"] for piece in pieces)
    assert start["status"] == 200
    assert dict(start["headers"]) == {
        b"content-type": b"application/json",
        b"content-length": str(len(body)).encode(),
    }
    assert msgspec.json.decode(body)["object"] == "chat.completion"
    assert pieces[-1] == {"type": "http.response.body", "body": b""}
    # The whole body arrived upstream (its length recomputed) with the client's own headers.
    (seen,) = fake_upstream.requests
    assert seen.body == chat_body("hi")
    assert seen.headers["authorization"] == "Bearer sk-relay"
    assert seen.headers["host"] != "proxy.example"


async def test_a_stream_is_copied_as_it_comes(fake_upstream: FakeUpstream) -> None:
    sent = await relay(fake_upstream, msgspec.json.encode(chat_body("hi", stream=True)), HEADERS)

    start, *pieces = sent
    assert start["status"] == 200
    assert dict(start["headers"])[b"content-type"].startswith(b"text/event-stream")
    assert len(pieces) > 2
    events = parse_sse(b"".join(piece["body"] for piece in pieces).decode())
    assert events[-1] == (None, "[DONE]")


async def test_an_error_status_is_passed_on(fake_upstream: FakeUpstream) -> None:
    headers = [*HEADERS, (b"x-fake-status", b"429")]

    start, *pieces = await relay(fake_upstream, msgspec.json.encode(chat_body("hi")), headers)

    assert start["status"] == 429
    assert b"error" in b"".join(piece["body"] for piece in pieces)
