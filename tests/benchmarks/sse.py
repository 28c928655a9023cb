"""Helpers for reading the fake upstream's answers in tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
COMPLETIONS = "/v1/completions"


def parse_sse(body: str) -> list[tuple[str | None, str]]:
    """Split a server-sent-events body into `(event name, data)` pairs, in order."""
    events = []
    for block in body.split("\n\n"):
        if not block:
            continue
        name, data = None, []
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        events.append((name, "\n".join(data)))
    return events


def chat_body(text: str = "hello", *, stream: bool = False, **fields: Any) -> dict[str, Any]:
    """An OpenAI chat request body with one user message."""
    return {
        "model": "fake-gpt",
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
        **fields,
    }


def messages_body(text: str = "hello", *, stream: bool = False, **fields: Any) -> dict[str, Any]:
    """An Anthropic Messages request body with one user message."""
    body = {
        "model": "fake-claude",
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": text}],
    }
    return {**body, "stream": stream, **fields}


async def read_events(lines: AsyncIterator[str], count: int) -> list[str]:
    """Read a response's lines until `count` `data:` lines have arrived; returns them.

    Pass the same `response.aiter_lines()` iterator to read on where the last call stopped.
    """
    events = []
    async for line in lines:
        if line.startswith("data: "):
            events.append(line)
            if len(events) == count:
                break
    return events
