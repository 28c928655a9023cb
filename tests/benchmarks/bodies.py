"""Request bodies and paths for the fake upstream's tests."""

from __future__ import annotations

from typing import Any

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
COMPLETIONS = "/v1/completions"


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
