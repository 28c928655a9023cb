"""A deterministic in-process provider for tests, examples and benchmarks."""

from __future__ import annotations

import base64
import hashlib
import inspect
import itertools
import math
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any

import msgspec
import trio

from pipeline import (
    BaseProvider,
    ChatCompletion,
    Chunk,
    ChunkChoice,
    Context,
    Delta,
    FunctionCall,
    FunctionCallDelta,
    GatewayTimeoutError,
    ProxyError,
    Request,
    ResponseStream,
    StreamError,
    ToolCallDelta,
    Usage,
    estimate_prompt_tokens,
    estimate_tokens,
)

from ._config import ProviderConfig, parse_options

__all__ = ["MockProvider"]

DEFAULT_TEXT = "Hello! This is the mock provider of llm-proxy, streaming a deterministic answer."

MockHandler = Callable[[Request, Context], "str | Awaitable[str]"]
_ids = itertools.count(1)
_encoder = msgspec.json.Encoder()
_any_decoder = msgspec.json.Decoder()
EMBEDDING_DIMENSIONS = 8
"""The length of the mock's vectors, unless the request asks for `dimensions`."""


def mock_vector(item: Any, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """The mock's deterministic unit vector for one embeddings input (a text or tokens)."""
    digest = hashlib.sha256(_encoder.encode(item)).digest()
    while len(digest) < 4 * dimensions:
        digest += hashlib.sha256(digest).digest()
    raw = [
        int.from_bytes(digest[4 * i : 4 * i + 4], "little") / 2**31 - 1 for i in range(dimensions)
    ]
    norm = sum(x * x for x in raw) ** 0.5 or 1.0
    return [x / norm for x in raw]


def _inputs(value: str | list[Any] | None) -> list[Any]:
    if value is None or isinstance(value, str):
        return [value or ""]
    if value and all(isinstance(item, int) for item in value):
        return [value]
    return list(value)


def _split(text: str, pieces: int) -> list[str]:
    """Split text into `pieces` nearly equal parts (fewer if the text is shorter)."""
    pieces = max(1, min(pieces, len(text))) if text else 1
    size, extra = divmod(len(text), pieces)
    parts, start = [], 0
    for i in range(pieces):
        end = start + size + (1 if i < extra else 0)
        parts.append(text[start:end])
        start = end
    return parts


def _split_tool_calls(calls: Sequence[FunctionCall], count: int) -> list[list[ToolCallDelta]]:
    """Each call as a first fragment (id and name) followed by argument fragments."""
    deltas: list[list[ToolCallDelta]] = []
    for index, call in enumerate(calls):
        deltas.append(
            [
                ToolCallDelta(
                    index=index,
                    id=f"call_mock_{index}",
                    type="function",
                    function=FunctionCallDelta(name=call.name, arguments=""),
                )
            ]
        )
        for part in _split(call.arguments, max(1, count - 1)):
            deltas.append([ToolCallDelta(index=index, function=FunctionCallDelta(arguments=part))])
    return deltas


class MockOptions(msgspec.Struct, forbid_unknown_fields=True):
    """The `options` a `mock` provider understands (see `MockProvider`)."""

    text: str = DEFAULT_TEXT
    """The answer's text."""
    echo: bool = False
    """Answer with the last user message's text instead of `text`."""
    chunks: Annotated[int, msgspec.Meta(ge=1)] = 8
    """How many content chunks to split the answer into."""
    ttft: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """Seconds before the first chunk."""
    chunk_delay: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """Seconds between chunks."""


class MockProvider(BaseProvider):
    """Answers every request itself: fixed text, an echo, or whatever a function returns.

    All delays use trio's clock, so tests on `autojump_clock` run them instantly. It also
    serves embeddings: each input gets a deterministic unit vector (`mock_vector`), of
    `dimensions` numbers (8 unless asked), as floats or base64, as the client asked.

    Args:
      text: the answer's text.
      echo: answer with the last user message's text instead of `text`.
      handler: a function (sync or async) from request and context to the answer's text;
        wins over `text` and `echo`. Like `httpx.MockTransport`, it makes a fake in one line.
      tool_calls: answer with these function calls (finish reason `tool_calls`) instead of
        text.
      chunks: how many content chunks to split the answer into.
      ttft: seconds before the first chunk.
      chunk_delay: seconds between chunks.
      error: raise this before the first chunk.
      error_count: raise `error` on this many calls, then succeed (None: on every call).
      fail_after: end the stream with a `StreamError` after this many chunks.
      supports_streaming: whether to claim streaming support.
      name: the provider's name.
      record: keep every request in `requests` (for tests); off by default, so a mock
        that serves for hours holds no memory per request.

    Attributes:
      calls: how many times `execute` was called.
      open_streams: streams handed out and not yet closed.
      closed_streams: streams that were closed.
      requests: the requests seen, in order, when `record` is set (else empty).
    """

    def __init__(
        self,
        text: str = DEFAULT_TEXT,
        *,
        echo: bool = False,
        handler: MockHandler | None = None,
        tool_calls: Sequence[FunctionCall] = (),
        chunks: int = 8,
        ttft: float = 0.0,
        chunk_delay: float = 0.0,
        error: ProxyError | None = None,
        error_count: int | None = None,
        fail_after: int | None = None,
        supports_streaming: bool = True,
        name: str = "mock",
        record: bool = False,
    ) -> None:
        self.text = text
        self.echo = echo
        self.handler = handler
        self.tool_calls = tuple(tool_calls)
        self.chunks = max(1, chunks)
        self.ttft = ttft
        self.chunk_delay = chunk_delay
        self.error = error
        self.error_count = error_count
        self.fail_after = fail_after
        self.supports_streaming = supports_streaming
        self.name = name
        self.record = record
        self.calls = 0
        self.open_streams = 0
        self.closed_streams = 0
        self.requests: list[Request] = []
        self.native_apis = frozenset({"embeddings"})

    @classmethod
    def from_config(cls, config: ProviderConfig) -> MockProvider:
        """A mock provider from its configuration section.

        Reads `text`, `echo`, `chunks`, `ttft` and `chunk_delay` from `options`.

        Raises:
          ConfigError: an unknown option or a wrong type, naming the provider and option.
        """
        options = parse_options(config, MockOptions)
        return cls(
            options.text,
            echo=options.echo,
            chunks=options.chunks,
            ttft=options.ttft,
            chunk_delay=options.chunk_delay,
            name=config.name,
        )

    async def _answer_text(self, request: Request, ctx: Context) -> str:
        if self.handler is not None:
            result = self.handler(request, ctx)
            return await result if inspect.isawaitable(result) else result
        if self.echo:
            for message in reversed(request.messages):
                if message.role == "user":
                    return message.text
            return ""
        return self.text

    async def execute(self, request: Request, ctx: Context) -> ResponseStream:
        self.calls += 1
        if self.record:
            self.requests.append(request)
        if self.error is not None and (self.error_count is None or self.calls <= self.error_count):
            await trio.sleep(self.ttft)
            raise self.error
        if request.api == "embeddings":
            return self._embeddings(request)
        text = await self._answer_text(request, ctx)
        response_id = f"chatcmpl-mock-{next(_ids)}"
        created = int(time.time())
        prompt_tokens = estimate_prompt_tokens(request)

        def chunk(delta: Delta, finish: str | None = None, usage: Usage | None = None) -> Chunk:
            choices = [] if usage is not None else [ChunkChoice(0, delta, finish)]
            return Chunk(response_id, created, request.model, choices, usage)

        chunks: list[Chunk] = []
        if self.tool_calls:
            fragments = _split_tool_calls(self.tool_calls, self.chunks)
            for i, calls in enumerate(fragments):
                chunks.append(chunk(Delta(role="assistant" if i == 0 else None, tool_calls=calls)))
            finish = "tool_calls"
            completion_tokens = sum(
                estimate_tokens(c.name) + estimate_tokens(c.arguments) for c in self.tool_calls
            )
        else:
            pieces = _split(text, self.chunks)
            finish = "stop"
            limit = request.output_limit
            if limit is not None and estimate_tokens(text) > limit:
                pieces = _split(text[: limit * 4], self.chunks)
                finish = "length"
            for i, piece in enumerate(pieces):
                chunks.append(chunk(Delta(role="assistant" if i == 0 else None, content=piece)))
            completion_tokens = estimate_tokens("".join(pieces))
        chunks.append(chunk(Delta(), finish))
        usage = Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)
        chunks.append(chunk(Delta(), usage=usage))

        deadline = math.inf
        limits = ctx.stream_limits
        if limits is not None and not self.ttft and not self.chunk_delay:
            # This stream never waits, so no first-token or idle limit can pass during one of
            # its reads: it tells the timeout middleware so (as the HTTP providers do), and
            # checks only the request's deadline itself.
            limits.enforced = True
            if ctx.deadline is not None:
                deadline = ctx.deadline
        self.open_streams += 1
        return ResponseStream(
            _MockStream(self, chunks, self.ttft, self.chunk_delay, self.fail_after, deadline),
            on_close=self._stream_closed,
        )

    def _embeddings(self, request: Request) -> ResponseStream:
        """Deterministic vectors: the same input always gets the same vector."""
        fields = request.native.fields if request.native is not None else {}
        options = {name: _any_decoder.decode(fields[name]) for name in fields}
        dimensions = options.get("dimensions") or EMBEDDING_DIMENSIONS
        data = []
        for index, item in enumerate(_inputs(request.input)):
            vector = mock_vector(item, dimensions)
            embedding: Any = vector
            if options.get("encoding_format") == "base64":
                packed = struct.pack(f"<{dimensions}f", *vector)
                embedding = base64.b64encode(packed).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = estimate_prompt_tokens(request)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        body = {"object": "list", "data": data, "model": request.model, "usage": usage}
        answer = ChatCompletion(
            f"embd-mock-{next(_ids)}",
            int(time.time()),
            request.model,
            [],
            Usage(tokens, 0, tokens),
            raw=_encoder.encode(body),
        )
        return ResponseStream.from_response(answer)

    def _stream_closed(self) -> None:
        self.open_streams -= 1
        self.closed_streams += 1


class _MockStream:
    __slots__ = (
        "_chunks",
        "_deadline",
        "_delay",
        "_fail_after",
        "_first_delay",
        "_i",
        "_provider",
    )

    def __init__(
        self,
        provider: MockProvider,
        chunks: list[Chunk],
        ttft: float,
        delay: float,
        fail_after: int | None,
        deadline: float = math.inf,
    ) -> None:
        self._provider = provider
        self._deadline = deadline
        self._chunks = chunks
        self._first_delay = ttft
        self._delay = delay
        self._fail_after = fail_after
        self._i = 0

    async def __anext__(self) -> Chunk:
        i = self._i
        delay = self._first_delay if i == 0 else self._delay
        if delay:
            await trio.sleep(delay)
        else:
            await trio.lowlevel.checkpoint()
            if trio.current_time() >= self._deadline:
                raise GatewayTimeoutError("The request did not finish before its deadline.")
        if i == self._fail_after:
            raise StreamError(f"mock stream broke after {i} chunks", provider=self._provider.name)
        if i >= len(self._chunks):
            raise StopAsyncIteration
        self._i = i + 1
        return self._chunks[i]
