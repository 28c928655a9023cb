"""OpenAI's dialects: chat completions, legacy text completions translated to chat, and
embeddings.

Chat is the pipeline's own shape: a chunk that carries the upstream's event as it came
(`Chunk.raw`, from an OpenAI-compatible upstream) is written as it is, so every field the
upstream sent reaches the client; any other chunk is encoded from its typed fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from pipeline import (
    ChatCompletion,
    Chunk,
    Message,
    Native,
    ProxyError,
    Request,
    Usage,
    ValidationError,
)
from pipeline._types import _any_decoder, _fields_decoder, decode_request, decoding_error

from ._dialect import Dialect, EventEncoder

__all__ = ["CHAT", "DONE", "EMBEDDINGS", "TEXT", "decode_completion_request"]

_encoder = msgspec.json.Encoder()


class _TextChoice(msgspec.Struct):
    text: str
    index: int
    logprobs: None = None
    finish_reason: str | None = None


class _TextCompletion(msgspec.Struct, omit_defaults=True):
    """OpenAI's `text_completion`: a whole answer, or one streamed piece of it."""

    id: str
    created: int
    model: str
    choices: list[_TextChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    object: str = msgspec.field(default_factory=lambda: "text_completion")


_prompt_decoder = msgspec.json.Decoder(str | list[str])

# Legacy fields chat upstreams do not know, with the values that leave the answer as chat
# gives it: those are dropped, any other value is refused.
_HARMLESS: dict[str, tuple[object, ...]] = {
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
}


def decode_completion_request(body: bytes) -> Request:
    """Decode a legacy completions request into the chat request it stands for.

    The prompt becomes one user message; every other field keeps its name (`max_tokens`,
    `temperature`, `stop`, `stream`, ...), and unknown ones land in `request.extra`.
    `echo`, `suffix` and `best_of`, which chat upstreams do not know, are dropped when they
    leave the answer as it is (false, empty, 1) and refused otherwise.

    Raises:
      ValidationError: the body is not a JSON object or is nested too deeply, the prompt is
        missing or is not one string, a field asks for what chat cannot do (`echo`,
        `suffix`, `best_of`, `logprobs`), or a field has a wrong type or value (`param`
        names it).
    """
    try:
        fields = _fields_decoder.decode(body)
    except msgspec.ValidationError:
        raise ValidationError("The request body must be a JSON object.") from None
    except Exception as exc:
        raise decoding_error(exc, body) from None
    raw = fields.pop("prompt", None)
    if raw is None:
        raise ValidationError("Object missing required field `prompt`", param="prompt")
    try:
        prompt = _prompt_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        message = str(exc).partition(" - at ")[0]
        raise ValidationError(message, param="prompt") from None
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise ValidationError("Send exactly one prompt per request.", param="prompt")
        prompt = prompt[0]
    for name in ("messages", "logprobs"):
        if name in fields:
            raise ValidationError(f"`{name}` is not supported on /v1/completions.", param=name)
    for name, harmless in _HARMLESS.items():
        raw_value = fields.pop(name, None)
        if raw_value is not None and _any_decoder.decode(raw_value) not in harmless:
            allowed = _encoder.encode(harmless[1]).decode()
            raise ValidationError(
                f"`{name}` is not supported on /v1/completions (only {allowed}).", param=name
            )
    fields["messages"] = msgspec.Raw(_encoder.encode([Message(role="user", content=prompt)]))
    return decode_request(_encoder.encode(fields))


# -- embeddings ------------------------------------------------------------------------------


class _EmbeddingsBody(msgspec.Struct):
    model: str
    input: str | list[Any]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, msgspec.Meta(ge=1)] | None = None
    user: str | None = None


_embeddings_decoder = msgspec.json.Decoder(_EmbeddingsBody)


def _check_input(value: str | list[Any]) -> None:
    """An embeddings input is a text, a token array, or a non-empty list of either."""
    if isinstance(value, str):
        return
    if not value:
        raise ValidationError("`input` must not be empty", param="input")
    if all(isinstance(item, int) for item in value):
        return
    for i, item in enumerate(value):
        ok = isinstance(item, str) or (
            isinstance(item, list) and item and all(isinstance(t, int) for t in item)
        )
        if not ok:
            raise ValidationError(
                "each input must be a text or a non-empty array of token ids",
                param=f"input[{i}]",
            )


def decode_embeddings_request(body: bytes) -> Request:
    """Decode an embeddings request into an `embeddings` call of the pipeline.

    Its `input` is kept as given (`Request.input`, which the token estimate counts), the
    body as sent in `native` (an OpenAI-compatible upstream gets it unchanged:
    `encoding_format`, `dimensions` and any unknown field); `messages` are empty.

    Raises:
      ValidationError: a field has the wrong type or value (`param` names it).
    """
    try:
        typed = _embeddings_decoder.decode(body)
        fields = _fields_decoder.decode(body)
    except Exception as exc:
        raise decoding_error(exc, body) from None
    _check_input(typed.input)
    return Request(
        model=typed.model,
        messages=[],
        user=typed.user,
        api="embeddings",
        input=typed.input,
        native=Native(fields),
    )


def _embeddings_whole(answer: ChatCompletion, request: Request) -> bytes:
    if answer.raw is None:
        raise ProxyError("The provider answered an embeddings call without its body.")
    return answer.raw


class _NoEvents:
    """Embeddings are never streamed; a stream of them is their whole answer."""

    def __init__(self, request: Request) -> None:
        pass

    def event(self, chunk: Chunk) -> bytes:
        return b"data: %b\n\n" % chunk.whole if chunk.whole is not None else b""

    def done(self) -> bytes:
        return DONE


# -- how each endpoint encodes its answers ---------------------------------------------------


class _ChatEvents:
    """Chat chunks as server-sent events; usage only for a client that asked for it."""

    __slots__ = ("_usage",)

    def __init__(self, request: Request) -> None:
        self._usage = request.wants_usage

    def event(self, chunk: Chunk) -> bytes:
        if chunk.usage is not None and not self._usage:
            if not chunk.choices:
                return b""
            if chunk.raw is None:
                chunk = msgspec.structs.replace(chunk, usage=None)
        if chunk.raw is not None:
            return chunk.raw
        if chunk.whole is not None:
            chunk = msgspec.structs.replace(chunk, whole=None)
        return b"data: %b\n\n" % _encoder.encode(chunk)

    def done(self) -> bytes:
        return DONE


def _chat_whole(answer: ChatCompletion, request: Request) -> bytes:
    return answer.raw if answer.raw is not None else _encoder.encode(answer)


def _text_completion(answer: Chunk | ChatCompletion, choices: list[_TextChoice]) -> bytes:
    # OpenAI's text completions have `cmpl-` ids; chat's are `chatcmpl-`.
    return _encoder.encode(
        _TextCompletion(
            "cmpl-" + answer.id.removeprefix("chatcmpl-"),
            answer.created,
            answer.model,
            choices,
            answer.usage,
            answer.system_fingerprint,
        )
    )


class _TextEvents(_ChatEvents):
    """Chat chunks as legacy text-completion events."""

    __slots__ = ()

    def event(self, chunk: Chunk) -> bytes:
        if chunk.usage is not None and not self._usage and not chunk.choices:
            return b""
        choices = [
            _TextChoice(c.delta.content or "", c.index, None, c.finish_reason)
            for c in chunk.choices
        ]
        return b"data: %b\n\n" % _text_completion(chunk, choices)


def _text_whole(answer: ChatCompletion, request: Request) -> bytes:
    choices = [
        _TextChoice(c.message.content or "", c.index, None, c.finish_reason) for c in answer.choices
    ]
    return _text_completion(answer, choices)


def _error_event(error: ProxyError) -> bytes:
    return b"data: %b\n\n" % error.to_json()


def _error_json(error: ProxyError) -> bytes:
    return error.to_json()


DONE = b"data: [DONE]\n\n"


def _chat_events(request: Request) -> EventEncoder:
    return _ChatEvents(request)


def _text_events(request: Request) -> EventEncoder:
    return _TextEvents(request)


def _no_events(request: Request) -> EventEncoder:
    return _NoEvents(request)


CHAT = Dialect(
    name="chat",
    decode=decode_request,
    events=_chat_events,
    whole=_chat_whole,
    error=_error_json,
    error_event=_error_event,
)
"""`POST /v1/chat/completions`: OpenAI's chat completions."""
TEXT = Dialect(
    name="completions",
    decode=decode_completion_request,
    events=_text_events,
    whole=_text_whole,
    error=_error_json,
    error_event=_error_event,
)
"""`POST /v1/completions`: OpenAI's legacy text completions, translated to chat."""
EMBEDDINGS = Dialect(
    name="embeddings",
    decode=decode_embeddings_request,
    events=_no_events,
    whole=_embeddings_whole,
    error=_error_json,
    error_event=_error_event,
)
"""`POST /v1/embeddings`: OpenAI's embeddings, passed through."""
