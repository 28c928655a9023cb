"""A plain text-completions API: the one the custom-provider guide describes.

The upstream takes `POST {base_url}/v1/completions` with
`{"prompt": str, "max_tokens": int | null, "temperature": float | null, "stream": bool}`
and answers `{"text": str, "finish_reason": str}`, optionally with
`"usage": {"prompt_tokens": int, "completion_tokens": int}`. Streaming, it sends the same
objects as server-sent events (`finish_reason` null until the last), then `data: [DONE]`;
an event `{"error": {"message": str}}` instead ends the stream with that error.
`GET {base_url}/v1/validate` answers success when the key is good.

Chat messages are rendered into one prompt, a line per message, ending with the cue for
the answer:

    System: You are terse.
    User: Hello
    Assistant: Hi.
    User: How are you?
    Assistant:

(`developer` messages are labelled `System`, tool results `Tool`.)
"""

from __future__ import annotations

import secrets
import time

import msgspec

from pipeline import (
    ChatCompletion,
    Chunk,
    ChunkChoice,
    Context,
    Delta,
    Message,
    Request,
    ResponseChoice,
    ResponseMessage,
    ResponseStream,
    Usage,
    ValidationError,
    estimate_tokens,
)

from ._events import UpstreamEventError, decode_event
from ._http import HTTPProvider
from ._sse import ServerSentEvent

__all__ = ["CompletionsProvider", "render_prompt"]

ROLE_LABELS = {
    "system": "System",
    "developer": "System",
    "user": "User",
    "assistant": "Assistant",
    "tool": "Tool",
}


def render_prompt(messages: list[Message]) -> str:
    """Render chat messages as a completion prompt: `Role: text` lines, then `Assistant:`."""
    lines = [f"{ROLE_LABELS[message.role]}: {message.text}" for message in messages]
    lines.append("Assistant:")
    return "\n".join(lines)


class _CompletionRequest(msgspec.Struct):
    prompt: str
    max_tokens: int | None
    temperature: float | None
    stream: bool


class _CompletionUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Completion(msgspec.Struct):
    text: str
    finish_reason: str | None = None
    usage: _CompletionUsage | None = None


_encoder = msgspec.json.Encoder()
_completion_decoder = msgspec.json.Decoder(_Completion)


def _usage(upstream: _CompletionUsage | None, prompt: str, answer_chars: int) -> Usage:
    if upstream is not None:
        prompt_tokens, completion_tokens = upstream.prompt_tokens, upstream.completion_tokens
    else:
        prompt_tokens, completion_tokens = estimate_tokens(prompt), estimate_tokens(answer_chars)
    return Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)


def _new_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


class CompletionsProvider(HTTPProvider):
    """A text-completions server behind the chat-completions shape.

    See the module's docstring for the upstream's API and the prompt template. Usage is
    the upstream's when it reports it, estimated (`estimate_tokens`) when it does not.
    Requests with tools are refused: the API has no tools.

    Args:
      base_url: the server's root URL, without `/v1`.
      **kwargs: as for `HTTPProvider`.
    """

    kind = "completions"
    chat_path = "/v1/completions"
    validate_path = "/v1/validate"

    async def execute(self, request: Request, ctx: Context) -> ResponseStream:
        if request.tools:
            raise ValidationError("the completions API has no tools", param="tools")
        prompt = render_prompt(request.messages)
        body = _encoder.encode(
            _CompletionRequest(prompt, request.output_limit, request.temperature, request.stream)
        )
        if request.stream:
            call = await self.post(self._chat_url, body, ctx, stream=True)
            return self.stream_events(call, _CompletionEvents(request, prompt))
        answer = await self.fetch(self._chat_url, body, ctx, _completion_decoder)
        message = ResponseMessage(content=answer.text)
        return ResponseStream.from_response(
            ChatCompletion(
                id=_new_id(),
                created=int(time.time()),
                model=request.model,
                choices=[ResponseChoice(0, message, answer.finish_reason or "stop")],
                usage=_usage(answer.usage, prompt, len(answer.text)),
            )
        )


class _CompletionEvents:
    """One chunk per event with text or a finish reason; the usage chunk at the end."""

    __slots__ = (
        "_chars",
        "_created",
        "_finish",
        "_id",
        "_model",
        "_prompt",
        "_started",
        "_usage",
        "done",
    )

    def __init__(self, request: Request, prompt: str) -> None:
        self._id = _new_id()
        self._created = int(time.time())
        self._model = request.model
        self._prompt = prompt
        self._started = False
        # The answer's length, for an estimate of its usage; the answer itself is not kept.
        self._chars = 0
        self._finish: str | None = None
        self._usage: _CompletionUsage | None = None
        self.done = False

    def feed(self, event: ServerSentEvent) -> Chunk | None:
        data = event.data
        if data == "[DONE]":
            self.done = True
            return None
        answer = decode_event(_completion_decoder, data)
        if answer.usage is not None:
            self._usage = answer.usage
        text = answer.text
        finish = answer.finish_reason
        if not text and finish is None:
            return None
        if finish is not None:
            self._finish = finish
        delta = Delta(role=None if self._started else "assistant", content=text or None)
        self._started = True
        self._chars += len(text)
        return Chunk(self._id, self._created, self._model, [ChunkChoice(0, delta, finish)])

    def finish(self) -> Chunk | None:
        if self._finish is None:
            raise UpstreamEventError("the upstream's stream ended without a finish_reason")
        usage = _usage(self._usage, self._prompt, self._chars)
        return Chunk(self._id, self._created, self._model, [], usage)
