"""ResponseStream: the async iterable of chunks that every handler returns.

A stream owns its upstream resources (an HTTP response, a concurrency slot, a token
reservation) and releases them in `aclose()`, which is idempotent and runs its cleanup
shielded from cancellation, so the release happens on success, error and cancellation alike.

Streams are pull-based: nothing is read from upstream before the consumer asks for the
next chunk, so a slow client makes the upstream wait and memory stays bounded.

Wrappers (`observe`, `map`) are small classes rather than async generators: trio forbids
yielding from inside a cancel scope opened in a generator, and a class has no such trap.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from enum import Enum
from types import TracebackType
from typing import Any, Protocol

import trio

from ._types import (
    ChatCompletion,
    Chunk,
    ChunkChoice,
    Delta,
    FunctionCall,
    FunctionCallDelta,
    ResponseChoice,
    ResponseMessage,
    ToolCall,
    ToolCallDelta,
    Usage,
)

__all__ = ["ChunkSource", "Outcome", "ResponseStream", "StreamEnd", "collect_chunks"]

# Cleanup (closing a connection, settling a reservation) runs shielded from cancellation
# but never for longer than this, so a wedged resource cannot hang the caller.
CLEANUP_TIMEOUT = 5.0


class ChunkSource(Protocol):
    """What a provider hands to `ResponseStream`: an async iterator of chunks."""

    def __anext__(self) -> Awaitable[Chunk]: ...


class Outcome(Enum):
    """How a stream ended."""

    COMPLETE = "complete"
    """The source was exhausted: every chunk was delivered."""
    ERROR = "error"
    """The source raised an exception."""
    CANCELLED = "cancelled"
    """The consumer stopped early (closed the stream or was cancelled)."""


class StreamEnd:
    """What an `observe` callback learns when a stream ends.

    Attributes:
      outcome: how it ended.
      error: the exception, for `Outcome.ERROR` (and the Cancelled, if that is how it ended).
      chunks: how many chunks went through.
    """

    __slots__ = ("chunks", "error", "outcome")

    def __init__(self, outcome: Outcome, error: BaseException | None, chunks: int) -> None:
        self.outcome = outcome
        self.error = error
        self.chunks = chunks

    def __repr__(self) -> str:
        return f"StreamEnd({self.outcome.value}, error={self.error!r}, chunks={self.chunks})"


OnChunk = Callable[[Chunk], None]
OnEnd = Callable[[StreamEnd], Awaitable[None] | None]
OnClose = Callable[[], Awaitable[None] | None]


async def _call_shielded(fn: Callable[[], Awaitable[None] | None]) -> None:
    """Run a cleanup callback to its end even if the caller is being cancelled.

    A sync callback needs no shield (it cannot be interrupted); an async one runs in a
    shielded scope with its own deadline.
    """
    result = fn()
    if inspect.isawaitable(result):
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CLEANUP_TIMEOUT):
            await result


class ResponseStream:
    """An async iterable of chunks that owns its upstream resources.

    Use it as an async context manager, or call `aclose()` when done; `aclose()` may be
    called any number of times and always releases what the stream holds.

    Args:
      source: where chunks come from: any async iterator (an async generator is fine as long
        as it does not yield inside a cancel scope or nursery it opened). If it has an
        `aclose()` method, closing the stream calls it.
      on_close: called once when the stream is closed, after the source, shielded from
        cancellation (release a connection, a slot, a reservation here).

    A wrapper that subclasses it overrides `_next_chunk()`, not `__anext__`: the base class
    hands out a peeked chunk and ends a closed stream itself, then calls the hook.
    """

    __slots__ = ("_closed", "_on_close", "_peeked", "_source")

    def __init__(self, source: ChunkSource | AsyncIterator[Chunk], on_close: OnClose | None = None):
        self._source = source
        self._on_close = on_close
        self._peeked: Chunk | None = None
        self._closed = False

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def from_chunks(cls, chunks: Iterable[Chunk]) -> ResponseStream:
        """A stream that replays the given chunks (a cache hit, a test)."""
        return cls(_IterSource(iter(chunks)))

    @classmethod
    def from_response(cls, response: ChatCompletion) -> ResponseStream:
        """A stream over a finished response: one chunk per choice, then usage.

        `collect()` of this stream gives back an equal response.
        """
        return cls.from_chunks(response_to_chunks(response))

    # -- iteration -------------------------------------------------------------------------

    def __aiter__(self) -> ResponseStream:
        return self

    def __anext__(self) -> Awaitable[Chunk]:
        # A plain method that hands back the hook's awaitable instead of awaiting it: the
        # preamble lives here once and costs no coroutine of its own, per chunk and per layer.
        peeked = self._peeked
        if peeked is not None:
            self._peeked = None
            return _ready(peeked)
        if self._closed:
            raise StopAsyncIteration
        return self._next_chunk()

    def _next_chunk(self) -> Awaitable[Chunk]:
        """The next chunk from upstream: the hook a wrapper overrides (often as `async def`).

        `__anext__` calls it only when no chunk is peeked and the stream is open; it raises
        `StopAsyncIteration` at the end.
        """
        return self._source.__anext__()

    async def peek(self) -> Chunk | None:
        """Wait for the next chunk without consuming it; None if the stream is exhausted.

        Retry and fallback use this to see the first chunk before anything reaches the
        client, so that a failure before it can still be retried.
        """
        if self._peeked is None:
            try:
                self._peeked = await self.__anext__()
            except StopAsyncIteration:
                return None
        return self._peeked

    @property
    def closed(self) -> bool:
        return self._closed

    # -- closing ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Release everything the stream holds. Idempotent; safe under cancellation."""
        if self._closed:
            return
        self._closed = True
        self._peeked = None
        source = self._source
        try:
            if isinstance(source, ResponseStream):
                await source.aclose()  # shields its own cleanup
            else:
                close = getattr(source, "aclose", None)
                if close is not None:
                    await _call_shielded(close)
        finally:
            if self._on_close is not None:
                await _call_shielded(self._on_close)

    async def __aenter__(self) -> ResponseStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- combinators -----------------------------------------------------------------------

    def observe(
        self, on_chunk: OnChunk | None = None, on_end: OnEnd | None = None
    ) -> ResponseStream:
        """A stream that passes every chunk through and tells the callbacks about them.

        A read that is cancelled ends the stream: `on_end` hears of it and the stream is
        closed, so nothing is read after what `on_end` released.

        Args:
          on_chunk: called with each chunk as it passes (keep it cheap: it runs per chunk).
          on_end: called exactly once when the stream ends: exhausted, failed, closed early
            or cancelled. It may be async; it runs shielded from cancellation, so it is the
            place to release or settle a reservation.
        """
        return _Observed(self, on_chunk, on_end)

    def map(self, fn: Callable[[Chunk], Chunk | None]) -> ResponseStream:
        """A stream of `fn(chunk)` for each chunk, dropping those for which `fn` returns None."""
        return _Mapped(self, fn)

    async def collect(self) -> ChatCompletion:
        """Read the stream to its end, close it, and assemble the complete response."""
        chunks: list[Chunk] = []
        async with self:
            async for chunk in self:
                chunks.append(chunk)
        return collect_chunks(chunks)


async def _ready(chunk: Chunk) -> Chunk:
    return chunk


_YIELD_EVERY = 16
"""Chunks an in-memory stream hands out before it lets other tasks run."""


class _IterSource:
    """Chunks already in memory (a whole answer, a cache hit).

    Each read is a cancellation point, but only every `_YIELD_EVERY`th a schedule point:
    a whole answer's few chunks cost no scheduler pass each (one is several microseconds,
    with an epoll poll), and a long replay still lets other tasks run.
    """

    __slots__ = ("_count", "_it")

    def __init__(self, it: Iterator[Chunk]) -> None:
        self._it = it
        self._count = 0

    async def __anext__(self) -> Chunk:
        self._count += 1
        if self._count % _YIELD_EVERY:
            await trio.lowlevel.checkpoint_if_cancelled()
        else:
            await trio.lowlevel.checkpoint()
        try:
            return next(self._it)
        except StopIteration:
            raise StopAsyncIteration from None


class _Observed(ResponseStream):
    __slots__ = ("_chunks", "_ended", "_inner", "_on_chunk", "_on_end")

    def __init__(self, inner: ResponseStream, on_chunk: OnChunk | None, on_end: OnEnd | None):
        super().__init__(inner)
        self._inner = inner
        self._on_chunk = on_chunk
        self._on_end = on_end
        self._chunks = 0
        self._ended = False

    async def _next_chunk(self) -> Chunk:
        try:
            chunk = await self._inner.__anext__()
        except StopAsyncIteration:
            await self._end(Outcome.COMPLETE, None)
            raise
        except Exception as exc:
            await self._end(Outcome.ERROR, exc)
            raise
        except BaseException as exc:
            await self._end(Outcome.CANCELLED, exc)
            # A cancelled read leaves the source in an unknown state, and the end has been
            # reported (a slot released, tokens settled): the stream must not go on.
            await self.aclose()
            raise
        self._chunks += 1
        if self._on_chunk is not None:
            self._on_chunk(chunk)
        return chunk

    async def _end(self, outcome: Outcome, error: BaseException | None) -> None:
        if self._ended:
            return
        self._ended = True
        if self._on_end is not None:
            end = StreamEnd(outcome, error, self._chunks)
            on_end = self._on_end
            await _call_shielded(lambda: on_end(end))

    async def aclose(self) -> None:
        if self._closed:
            return
        try:
            await super().aclose()
        finally:
            await self._end(Outcome.CANCELLED, None)


class _Mapped(ResponseStream):
    __slots__ = ("_fn",)

    def __init__(self, inner: ResponseStream, fn: Callable[[Chunk], Chunk | None]) -> None:
        super().__init__(inner)
        self._fn = fn

    async def _next_chunk(self) -> Chunk:
        while not self._closed:
            mapped = self._fn(await self._source.__anext__())
            if mapped is not None:
                return mapped
        raise StopAsyncIteration


# -- assembling and splitting responses ----------------------------------------------------


class _ToolCallParts:
    __slots__ = ("arguments", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments: list[str] = []


class _ChoiceParts:
    __slots__ = (
        "content",
        "finish_reason",
        "logprobs",
        "reasoning",
        "refusal",
        "role",
        "tool_calls",
    )

    def __init__(self) -> None:
        self.role = "assistant"
        self.content: list[str] | None = None
        self.refusal: list[str] | None = None
        self.reasoning: list[str] | None = None
        self.tool_calls: dict[int, _ToolCallParts] = {}
        self.finish_reason: str | None = None
        self.logprobs: dict[str, Any] | None = None

    def add(self, choice: ChunkChoice) -> None:
        delta = choice.delta
        if delta.role is not None:
            self.role = delta.role
        if delta.content is not None:
            if self.content is None:
                self.content = []
            self.content.append(delta.content)
        if delta.refusal is not None:
            if self.refusal is None:
                self.refusal = []
            self.refusal.append(delta.refusal)
        if delta.reasoning_content is not None:
            if self.reasoning is None:
                self.reasoning = []
            self.reasoning.append(delta.reasoning_content)
        for fragment in delta.tool_calls or ():
            parts = self.tool_calls.get(fragment.index)
            if parts is None:
                parts = self.tool_calls[fragment.index] = _ToolCallParts()
            if fragment.id:
                parts.id = fragment.id
            if fragment.function is not None:
                if fragment.function.name:
                    parts.name += fragment.function.name
                if fragment.function.arguments:
                    parts.arguments.append(fragment.function.arguments)
        if choice.finish_reason is not None:
            self.finish_reason = choice.finish_reason
        if choice.logprobs is not None:
            self.logprobs = choice.logprobs

    def build(self, index: int) -> ResponseChoice:
        tool_calls = None
        if self.tool_calls:
            tool_calls = [
                ToolCall(
                    id=p.id, function=FunctionCall(name=p.name, arguments="".join(p.arguments))
                )
                for _, p in sorted(self.tool_calls.items())
            ]
        message = ResponseMessage(
            role=self.role,
            content="".join(self.content) if self.content is not None else None,
            tool_calls=tool_calls,
            refusal="".join(self.refusal) if self.refusal is not None else None,
            reasoning_content="".join(self.reasoning) if self.reasoning is not None else None,
        )
        return ResponseChoice(index, message, self.finish_reason, self.logprobs)


def collect_chunks(chunks: Iterable[Chunk]) -> ChatCompletion:
    """Assemble chunks into the complete response.

    Text and refusals are concatenated per choice, tool-call fragments are joined by their
    index, the last finish reason and the last usage win; id, model and creation time come
    from the first chunk. The chunks of an answer that came whole (`Chunk.whole`) give
    back its body as `raw`.
    """
    first: Chunk | None = None
    whole: bytes | None = None
    usage: Usage | None = None
    fingerprint: str | None = None
    choices: dict[int, _ChoiceParts] = {}
    for chunk in chunks:
        if first is None:
            first = chunk
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.system_fingerprint is not None:
            fingerprint = chunk.system_fingerprint
        if chunk.whole is not None:
            whole = chunk.whole
        for choice in chunk.choices:
            parts = choices.get(choice.index)
            if parts is None:
                parts = choices[choice.index] = _ChoiceParts()
            parts.add(choice)
    if first is None:
        return ChatCompletion(id="", created=int(time.time()), model="", choices=[])
    return ChatCompletion(
        id=first.id,
        created=first.created,
        model=first.model,
        choices=[parts.build(index) for index, parts in sorted(choices.items())],
        usage=usage,
        system_fingerprint=fingerprint,
        raw=whole,
    )


def response_to_chunks(response: ChatCompletion) -> list[Chunk]:
    """Split a finished response into the chunks a stream of it would carry."""
    chunks = []
    for choice in response.choices:
        message = choice.message
        tool_calls = None
        if message.tool_calls is not None:
            tool_calls = [
                ToolCallDelta(
                    index=i,
                    id=call.id,
                    type="function",
                    function=FunctionCallDelta(call.function.name, call.function.arguments),
                )
                for i, call in enumerate(message.tool_calls)
            ]
        delta = Delta(
            role=message.role,
            content=message.content,
            tool_calls=tool_calls,
            refusal=message.refusal,
            reasoning_content=message.reasoning_content,
        )
        chunks.append(
            Chunk(
                id=response.id,
                created=response.created,
                model=response.model,
                choices=[ChunkChoice(choice.index, delta, choice.finish_reason, choice.logprobs)],
                system_fingerprint=response.system_fingerprint,
            )
        )
    if response.usage is not None or not chunks:
        chunks.append(
            Chunk(
                id=response.id,
                created=response.created,
                model=response.model,
                usage=response.usage,
                system_fingerprint=response.system_fingerprint,
            )
        )
    if response.raw is not None:
        chunks[0].whole = response.raw
    return chunks
