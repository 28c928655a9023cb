"""Shared fixtures and helpers for the test suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from benchmarks.fake_upstream import FakeUpstream, run_fake_upstream
from pipeline import Message, Request


def make_request(
    text: str = "hello", *, model: str = "mock-1", stream: bool = True, **fields: Any
) -> Request:
    """A minimal valid request with one user message."""
    return Request(
        model=model, messages=[Message(role="user", content=text)], stream=stream, **fields
    )


@pytest.fixture
async def fake_upstream() -> AsyncIterator[FakeUpstream]:
    """A fake LLM upstream serving on 127.0.0.1 (a free port) for one test."""
    async with run_fake_upstream() as upstream:
        yield upstream
