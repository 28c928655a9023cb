"""OpenAI's chat-completions API, and every server that speaks it (vLLM, llama.cpp, ...).

Our wire types are OpenAI's, so nothing is translated: the request is encoded as it came
(unknown fields included, at every depth), and each streamed event is decoded by one
reused typed decoder straight into a `Chunk` that also carries the event as it came
(`Chunk.raw`), so a chat client gets every field the upstream sent.

Embeddings (`POST /embeddings`) and, for upstreams that serve it, the Responses API
(`POST /responses`) are passed through: the client's body goes up as sent (with the
pipeline's model), the upstream's answer or events come back as they are, and only what
the middlewares need (usage, the finish) is decoded.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import msgspec

from pipeline import (
    ChatCompletion,
    Chunk,
    ChunkChoice,
    Context,
    Delta,
    Request,
    ResponseChoice,
    ResponseMessage,
    ResponseStream,
    StreamOptions,
    Usage,
    encode_request,
    estimate_prompt_tokens,
    estimate_tokens,
)

from ._errors import _any_decoder, error_fields
from ._events import UpstreamEventError, decode_event
from ._http import HTTPProvider
from ._native import RawEvents, decode_answer, native_body
from ._sse import ServerSentEvent

__all__ = ["OpenAIOptions", "OpenAIProvider"]

_chunk_decoder = msgspec.json.Decoder(Chunk)
_completion_decoder = msgspec.json.Decoder(ChatCompletion)
_INCLUDE_USAGE = StreamOptions(include_usage=True)


class OpenAIOptions(msgspec.Struct, forbid_unknown_fields=True):
    """The `options` an `openai` provider understands."""

    responses: bool | None = None
    """Whether the upstream serves the Responses API (`POST /responses`), so that requests
    to `/v1/responses` pass through to it; otherwise they are translated to chat. Unset:
    only for OpenAI's own API (the default base URL)."""


class OpenAIProvider(HTTPProvider):
    """Any OpenAI-compatible chat-completions server.

    Sends `POST {base_url}/chat/completions` with `Authorization: Bearer <key>` (when a key
    is set) and the request as the client sent it, unknown fields included. Streams always
    ask for usage (`stream_options.include_usage`), so usage is captured even when the
    client did not ask for it; the final usage chunk is passed on, and the server drops it
    for clients that did not ask. A stream that carries no usage at all gets an estimated
    one. `validate()` lists the models (`GET {base_url}/models`).

    Args:
      base_url: the API root, `/v1` included (default: OpenAI's).
      **kwargs: as for `HTTPProvider`.
    """

    kind = "openai"
    default_base_url = "https://api.openai.com/v1"
    chat_path = "/chat/completions"
    validate_path = "/models"
    Options: ClassVar[type[msgspec.Struct]] = OpenAIOptions

    def __init__(
        self, base_url: str | None = None, *, responses: bool | None = None, **kwargs: Any
    ) -> None:
        super().__init__(base_url, **kwargs)
        if responses is None:
            responses = self.base_url == self.default_base_url
        self.responses = responses
        apis = {"chat", "embeddings"} | ({"responses"} if responses else set())
        self.native_apis = frozenset(apis)

    def chat_url(self, request: Request) -> str:
        """Where a request is posted (Azure's URL names the deployment, for one)."""
        return self._chat_url

    async def execute(self, request: Request, ctx: Context) -> ResponseStream:
        api = request.api
        if api == "embeddings":
            return await self._embeddings(request, ctx)
        if api == "responses" and self.responses:
            return await self._responses(request, ctx)
        # Only a chat client gets the upstream's own events; other doors translate chunks.
        native = api == "chat" and request.native is not None
        url = self.chat_url(request)
        if request.stream:
            if not request.wants_usage:
                request = msgspec.structs.replace(request, stream_options=_INCLUDE_USAGE)
            call = await self.post(url, encode_request(request), ctx, stream=True)
            return self.stream_events(call, _OpenAIEvents(request, native=native))
        if request.stream_options is not None:
            # OpenAI refuses stream_options on a request that does not stream.
            request = msgspec.structs.replace(request, stream_options=None)
        body = encode_request(request)
        if native:
            data = await self.read_body(await self.post(url, body, ctx, stream=False))
            response = decode_answer(
                data, _completion_decoder, provider=self.name, redact=self._redact
            )
            response.raw = data
        else:
            response = await self.fetch(url, body, ctx, _completion_decoder)
        if response.usage is None:
            response.usage = _estimate_usage(request, _answer_chars(response))
        return ResponseStream.from_response(response)

    async def _embeddings(self, request: Request, ctx: Context) -> ResponseStream:
        url = self.base_url + "/embeddings"
        body = native_body(request)
        data = await self.read_body(await self.post(url, body, ctx, stream=False))
        answer = decode_answer(data, _embeddings_decoder, provider=self.name, redact=self._redact)
        usage = answer.usage
        if usage is None:
            prompt = estimate_prompt_tokens(request)
            usage = _EmbeddingUsage(prompt, prompt)
        return ResponseStream.from_response(
            ChatCompletion(
                "embeddings",
                int(time.time()),
                answer.model or request.model,
                [],
                Usage(usage.prompt_tokens, 0, usage.total_tokens),
                raw=data,
            )
        )

    async def _responses(self, request: Request, ctx: Context) -> ResponseStream:
        url = self.base_url + "/responses"
        body = native_body(request, stream=request.stream)
        if request.stream:
            call = await self.post(url, body, ctx, stream=True)
            return self.stream_events(call, ResponsesEvents(request))
        data = await self.read_body(await self.post(url, body, ctx, stream=False))
        answer = decode_answer(data, _response_decoder, provider=self.name, redact=self._redact)
        message = ResponseMessage(content=answer.text or None)
        finish = answer.finish_reason
        return ResponseStream.from_response(
            ChatCompletion(
                answer.id,
                int(answer.created_at),
                answer.model or request.model,
                [ResponseChoice(0, message, finish)],
                answer.usage.chat() if answer.usage is not None else None,
                raw=data,
            )
        )


def _answer_chars(response: ChatCompletion) -> int:
    chars = 0
    for choice in response.choices:
        chars += len(choice.message.content or "")
        for call in choice.message.tool_calls or ():
            chars += len(call.function.arguments)
    return chars


def _estimate_usage(request: Request, answer_chars: int) -> Usage:
    prompt = estimate_prompt_tokens(request)
    completion = estimate_tokens(answer_chars)
    return Usage(prompt, completion, prompt + completion)


def _repaired_chunk(data: str) -> Chunk:
    """A chunk that OpenAI-compatible servers send but the typed decoder refuses.

    Some send `"delta": null` (read as an empty delta) or a float `created`; the typed
    decoder stays the fast path, and only a chunk it refuses is read again leniently.

    Raises:
      msgspec.ValidationError: the data is still not a chunk.
    """
    raw = _any_decoder.decode(data)
    if isinstance(raw, dict) and isinstance(raw.get("choices"), list):
        for choice in raw["choices"]:
            if isinstance(choice, dict) and "delta" in choice and choice["delta"] is None:
                del choice["delta"]
    return msgspec.convert(raw, Chunk, strict=False)


class _OpenAIEvents:
    """Decodes each event into a `Chunk`; notes finish reasons and usage on the way.

    With `native` (a chat client), each chunk also carries its event as it came.
    """

    __slots__ = ("_chars", "_finished", "_last", "_raw", "_request", "_usage_seen", "done")

    def __init__(self, request: Request, *, native: bool = False) -> None:
        self._request = request
        self._raw = RawEvents(self._empty) if native else None
        self._finished = False
        self._usage_seen = False
        self._last: Chunk | None = None
        # Counted only to estimate usage for an upstream that never reports it: the count is
        # all an estimate needs, and keeping the pieces would hold the whole answer.
        self._chars = 0
        self.done = False

    def feed(self, event: ServerSentEvent) -> Chunk | None:
        if event.event != "message":
            if event.event == "error":
                # Not trimmed here: the stream redacts our key, then trims.
                message = error_fields(event.data)[0] or event.data
                raise UpstreamEventError(f"the upstream reported an error mid-stream: {message}")
            return None
        data = event.data
        if data == "[DONE]":
            self.done = True
            return None
        try:
            chunk = decode_event(_chunk_decoder, data)
        except msgspec.ValidationError:
            chunk = _repaired_chunk(data)
        for choice in chunk.choices:
            if choice.finish_reason is not None:
                self._finished = True
            content = choice.delta.content
            if content:
                self._chars += len(content)
            if choice.delta.tool_calls:
                for call in choice.delta.tool_calls:
                    if call.function is not None and call.function.arguments:
                        self._chars += len(call.function.arguments)
        if chunk.usage is not None:
            self._usage_seen = True
        self._last = chunk
        if self._raw is not None:
            return self._raw.attach(chunk, event)
        return chunk

    def _empty(self) -> Chunk:
        last = self._last
        assert last is not None  # only called once a chunk was decoded
        return Chunk(last.id, last.created, last.model)

    def finish(self) -> Chunk | None:
        last = self._last
        if not self._finished or last is None:
            raise UpstreamEventError("the upstream's stream ended without a finish reason")
        chunk = None
        if not self._usage_seen:
            usage = _estimate_usage(self._request, self._chars)
            chunk = Chunk(last.id, last.created, last.model, [], usage)
        return self._raw.flush(chunk) if self._raw is not None else chunk


# -- embeddings and the Responses API: only what the middlewares need is decoded -----------


class _EmbeddingUsage(msgspec.Struct):
    prompt_tokens: int = 0
    total_tokens: int = 0


class _Embeddings(msgspec.Struct):
    model: str = ""
    usage: _EmbeddingUsage | None = None


_embeddings_decoder = msgspec.json.Decoder(_Embeddings)


class _ResponseUsage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: dict[str, Any] | None = None
    output_tokens_details: dict[str, Any] | None = None

    def chat(self) -> Usage:
        cached = (self.input_tokens_details or {}).get("cached_tokens")
        return Usage(
            self.input_tokens,
            self.output_tokens,
            self.total_tokens or self.input_tokens + self.output_tokens,
            {"cached_tokens": cached} if cached else None,
            self.output_tokens_details,
        )


class _OutputPart(msgspec.Struct):
    type: str = ""
    text: str = ""


class _OutputItem(msgspec.Struct):
    type: str = ""
    content: list[_OutputPart] = msgspec.field(default_factory=list)


class _IncompleteDetails(msgspec.Struct):
    reason: str | None = None


class _Response(msgspec.Struct):
    id: str = ""
    created_at: float = 0
    model: str = ""
    status: str | None = None
    output: list[_OutputItem] = msgspec.field(default_factory=list)
    usage: _ResponseUsage | None = None
    incomplete_details: _IncompleteDetails | None = None

    @property
    def text(self) -> str:
        return "".join(
            part.text
            for item in self.output
            if item.type == "message"
            for part in item.content
            if part.type == "output_text"
        )

    @property
    def finish_reason(self) -> str:
        if any(item.type == "function_call" for item in self.output):
            return "tool_calls"
        if self.status == "incomplete":
            reason = self.incomplete_details.reason if self.incomplete_details else None
            return "content_filter" if reason == "content_filter" else "length"
        return "stop"


class _ResponseError(msgspec.Struct):
    message: str = ""
    code: str | None = None


class _ResponseEvent(msgspec.Struct):
    type: str = ""
    delta: str | None = None
    response: _Response | None = None
    message: str | None = None
    code: str | None = None
    error: _ResponseError | None = None


_response_decoder = msgspec.json.Decoder(_Response)
_response_event_decoder = msgspec.json.Decoder(_ResponseEvent)
_FAILED = ("response.failed", "error")


class ResponsesEvents:
    """Passes a Responses API stream through, decoding text, the finish and usage.

    Every event reaches the client as it came (`Chunk.raw`); `response.completed` (or
    `response.incomplete`) makes the finish chunk, with usage. `response.failed` and
    `error` end the stream with the upstream's message.
    """

    __slots__ = ("_created", "_id", "_model", "_raw", "_tool_calls", "done")

    def __init__(self, request: Request) -> None:
        self._id = ""
        self._model = request.model
        self._created = int(time.time())
        self._raw = RawEvents(self._empty)
        self._tool_calls = False
        self.done = False

    def _empty(self) -> Chunk:
        return Chunk(self._id, self._created, self._model)

    def feed(self, event: ServerSentEvent) -> Chunk | None:
        data = _response_event_decoder.decode(event.data)
        kind = data.type or event.event
        chunk: Chunk | None = None
        response = data.response
        if response is not None and response.id:
            self._id = response.id
            self._model = response.model or self._model
        if kind == "response.output_text.delta" and data.delta:
            chunk = Chunk(self._id, self._created, self._model, [_choice(content=data.delta)])
        elif kind == "response.output_item.added" and b'"function_call"' in event.data.encode():
            self._tool_calls = True
        elif kind in ("response.completed", "response.incomplete") and response is not None:
            finish = response.finish_reason
            if self._tool_calls and finish == "stop":
                finish = "tool_calls"
            usage = response.usage.chat() if response.usage is not None else None
            choice = ChunkChoice(0, Delta(), finish)
            chunk = Chunk(self._id, self._created, self._model, [choice], usage)
            self.done = True
        elif kind in _FAILED:
            error = data.error
            message = data.message or (error.message if error else "") or "the response failed"
            raise UpstreamEventError(
                f"the upstream reported an error mid-stream: {message}",
                code=data.code or (error.code if error else None),
            )
        return self._raw.attach(chunk, event)

    def finish(self) -> Chunk | None:
        if not self.done:
            raise UpstreamEventError("the upstream's stream ended without `response.completed`")
        return self._raw.flush(None)


def _choice(*, content: str) -> ChunkChoice:
    return ChunkChoice(0, Delta(content=content))
