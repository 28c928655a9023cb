"""OpenAI's chat-completions API, and every server that speaks it (vLLM, llama.cpp, ...).

Our wire types are OpenAI's, so nothing is translated: the request is encoded as it came
(unknown fields included), and each streamed event is decoded by one reused typed decoder
straight into a `Chunk`.
"""

from __future__ import annotations

import msgspec

from pipeline import (
    ChatCompletion,
    Chunk,
    Context,
    Request,
    ResponseStream,
    StreamOptions,
    Usage,
    encode_request,
    estimate_prompt_tokens,
    estimate_tokens,
)

from ._http import HTTPProvider, UpstreamEventError, _any_decoder, decode_event, error_fields
from ._sse import ServerSentEvent

__all__ = ["OpenAIProvider"]

_chunk_decoder = msgspec.json.Decoder(Chunk)
_completion_decoder = msgspec.json.Decoder(ChatCompletion)
_INCLUDE_USAGE = StreamOptions(include_usage=True)


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

    def chat_url(self, request: Request) -> str:
        """Where a request is posted (Azure's URL names the deployment, for one)."""
        return self._chat_url

    async def execute(self, request: Request, ctx: Context) -> ResponseStream:
        url = self.chat_url(request)
        if request.stream:
            if not request.wants_usage:
                request = msgspec.structs.replace(request, stream_options=_INCLUDE_USAGE)
            call = await self.post(url, encode_request(request), ctx, stream=True)
            return self.stream_events(call, _OpenAIEvents(request))
        if request.stream_options is not None:
            # OpenAI refuses stream_options on a request that does not stream.
            request = msgspec.structs.replace(request, stream_options=None)
        body = encode_request(request)
        response = await self.fetch(url, body, ctx, _completion_decoder)
        if response.usage is None:
            response.usage = _estimate_usage(request, _answer_chars(response))
        return ResponseStream.from_response(response)


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
    """Decodes each event into a `Chunk`; notes finish reasons and usage on the way."""

    __slots__ = ("_chars", "_finished", "_last", "_request", "_usage_seen", "done")

    def __init__(self, request: Request) -> None:
        self._request = request
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
        return chunk

    def finish(self) -> Chunk | None:
        last = self._last
        if not self._finished or last is None:
            raise UpstreamEventError("the upstream's stream ended without a finish reason")
        if self._usage_seen:
            return None
        usage = _estimate_usage(self._request, self._chars)
        return Chunk(last.id, last.created, last.model, [], usage)
