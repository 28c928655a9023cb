"""Shared fixtures and helpers for the test suite."""

from __future__ import annotations

from typing import Any

from pipeline import Message, Request


def make_request(
    text: str = "hello", *, model: str = "mock-1", stream: bool = True, **fields: Any
) -> Request:
    """A minimal valid request with one user message."""
    return Request(
        model=model, messages=[Message(role="user", content=text)], stream=stream, **fields
    )
