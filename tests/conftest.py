"""Shared fixtures and helpers for the test suite."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import structlog

from benchmarks.fake_upstream import FakeConfig, FakeUpstream, run_fake_upstream
from middlewares import configure_logging
from pipeline import Message, Request


def make_request(
    text: str = "hello", *, model: str = "mock-1", stream: bool = True, **fields: Any
) -> Request:
    """A minimal valid request with one user message."""
    return Request(
        model=model, messages=[Message(role="user", content=text)], stream=stream, **fields
    )


@pytest.fixture
def fake_upstream_config() -> FakeConfig:
    """The knobs `fake_upstream` starts with: the fake's defaults.

    Override this fixture in a conftest or a module (the integration tests require an API
    key), or parametrize it by name, to start the fake differently.
    """
    return FakeConfig()


@pytest.fixture
async def fake_upstream(fake_upstream_config: FakeConfig) -> AsyncIterator[FakeUpstream]:
    """A fake LLM upstream serving `fake_upstream_config` on 127.0.0.1 (a free port)."""
    async with run_fake_upstream(fake_upstream_config) as upstream:
        yield upstream


class Lines:
    """What the configured logging wrote, as raw text and as decoded JSON events."""

    def __init__(self) -> None:
        self.out = io.StringIO()

    @property
    def text(self) -> str:
        return self.out.getvalue()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines()]


@pytest.fixture
def lines() -> Iterator[Lines]:
    """Logging configured for JSON into a buffer at `info` (the `debug` decision lines are
    `test_debug_log`'s); structlog's defaults restored afterwards."""
    captured = Lines()
    configure_logging("json", "info", file=captured.out)
    yield captured
    structlog.reset_defaults()
