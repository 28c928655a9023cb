"""OpenAI's dialects: chat completions, and legacy text completions translated to chat.

A `Dialect` is what a door needs to speak its API: decode the request into the pipeline's
`Request`, encode chunks as server-sent events, a collected answer as JSON, and errors in
its own error shape. The application routes each path to one.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from pipeline import ChatCompletion, Chunk, Message, ProxyError, Request, Usage, ValidationError
from pipeline._types import _any_decoder, _fields_decoder, decode_request, decoding_error

__all__ = ["CHAT", "DONE", "TEXT", "Dialect", "decode_completion_request"]

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


# -- how each endpoint encodes its answers ---------------------------------------------------


def _chat_event(chunk: Chunk) -> bytes:
    return b"data: %b\n\n" % _encoder.encode(chunk)


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


def _text_event(chunk: Chunk) -> bytes:
    choices = [
        _TextChoice(c.delta.content or "", c.index, None, c.finish_reason) for c in chunk.choices
    ]
    return b"data: %b\n\n" % _text_completion(chunk, choices)


def _text_whole(answer: ChatCompletion) -> bytes:
    choices = [
        _TextChoice(c.message.content or "", c.index, None, c.finish_reason) for c in answer.choices
    ]
    return _text_completion(answer, choices)


def _error_event(error: ProxyError) -> bytes:
    return b"data: %b\n\n" % error.to_json()


class Dialect(msgspec.Struct, frozen=True):
    """How a door decodes its request and encodes answers, stream events and errors.

    Attributes:
      decode: the request body into the pipeline's `Request`.
      event: one chunk as a server-sent event (bytes on the wire, framing included).
      whole: a collected answer as the JSON body of a 200.
      error: an error as the JSON body of an error response.
      error_event: the event that ends a stream broken after it started.
      done: what ends a stream that finished (OpenAI's `data: [DONE]`).
    """

    decode: Callable[[bytes], Request]
    event: Callable[[Chunk], bytes]
    whole: Callable[[ChatCompletion], bytes]
    error: Callable[[ProxyError], bytes]
    error_event: Callable[[ProxyError], bytes]
    done: bytes


def _error_json(error: ProxyError) -> bytes:
    return error.to_json()


DONE = b"data: [DONE]\n\n"

CHAT = Dialect(decode_request, _chat_event, _encoder.encode, _error_json, _error_event, DONE)
"""`POST /v1/chat/completions`: OpenAI's chat completions."""
TEXT = Dialect(decode_completion_request, _text_event, _text_whole, _error_json, _error_event, DONE)
"""`POST /v1/completions`: OpenAI's legacy text completions, translated to chat."""
