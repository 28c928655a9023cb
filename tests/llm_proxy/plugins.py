"""Plugins as someone would write them in a package of their own, loaded by import path.

Each middleware here adds a `tag:` system message naming itself and whether it saw an
authenticated key (`after = "auth"` does, `before = "auth"` does not); the `Echo` provider
answers with the tags it received, so a test reads the real order off the answer.
"""

from __future__ import annotations

from typing import Any

import msgspec

from pipeline import (
    BaseProvider,
    ChatCompletion,
    Context,
    Handler,
    Message,
    Middleware,
    Request,
    ResponseChoice,
    ResponseMessage,
    ResponseStream,
)
from providers import ProviderConfig

TAG = "tag:"


def _tagged(request: Request, ctx: Context, name: str) -> Request:
    seen = f"{TAG}{name}@{ctx.key.id if ctx.key is not None else '-'}"
    message = Message(role="system", content=seen)
    return msgspec.structs.replace(request, messages=[*request.messages, message])


class Tag:
    """A middleware class whose options are its constructor's keyword arguments."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def __call__(self, request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        return await call_next(_tagged(request, ctx, self.name), ctx)


def tagger(name: str, suffix: str = "") -> Middleware:
    """A factory function: called with the options, it returns the middleware."""

    async def tag(request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        return await call_next(_tagged(request, ctx, name + suffix), ctx)

    return tag


async def mark(request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
    """A plain middleware function, used as it is."""
    return await call_next(_tagged(request, ctx, "mark"), ctx)


class EchoOptions(msgspec.Struct, forbid_unknown_fields=True):
    greeting: str = "hello"


class Echo(BaseProvider):
    """A provider of one's own: answers with its greeting and the tags it received."""

    def __init__(self, greeting: str, name: str) -> None:
        self.greeting = greeting
        self.name = name

    @classmethod
    def from_config(cls, section: ProviderConfig) -> Echo:
        options = msgspec.convert(section.options, EchoOptions)
        return cls(options.greeting, section.name)

    async def execute(self, request: Request, ctx: Context) -> ResponseStream:
        tags = [
            m.text.removeprefix(TAG)
            for m in request.messages
            if m.role == "system" and m.text.startswith(TAG)
        ]
        text = f"{self.greeting} from {self.name}: {' '.join(tags)}"
        answer = ChatCompletion(
            id="echo",
            created=0,
            model=request.model,
            choices=[ResponseChoice(0, ResponseMessage(content=text), "stop")],
        )
        return ResponseStream.from_response(answer)


class NoFromConfig(BaseProvider):
    """A provider class the configuration cannot build: it has no `from_config`."""


class NotAProvider:
    @classmethod
    def from_config(cls, section: ProviderConfig) -> int:
        return 42


NOT_CALLABLE = 42


async def two_arguments(request: Request, ctx: Context) -> ResponseStream:
    """Not a middleware: it cannot be given `call_next`."""
    raise AssertionError("never called")


def returns_a_number(**options: Any) -> int:
    return 3
