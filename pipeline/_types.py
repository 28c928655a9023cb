"""Wire types in the OpenAI chat-completions shape, decoded and validated by msgspec.

The request is what clients send; the chunk is what every provider produces and what the
server encodes as server-sent events; the completion is the non-streaming answer. Using the
OpenAI wire shape for the chunk means the common path (OpenAI-compatible upstream, OpenAI
client) decodes and re-encodes without translating anything.

Every door (chat, Anthropic Messages, Responses, embeddings) decodes into the same
`Request`, so that middlewares see one model of the call; `Request.api` says which API the
client spoke, and `Request.native` keeps the body as it was sent, so that an upstream of the
same API receives it unchanged (unknown fields at every depth included). In the other
direction a chunk may carry `raw`: the upstream's own events, in the client's API, which
the door writes as they came while middlewares read the typed fields.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

from ._errors import ValidationError

__all__ = [
    "API_NAMES",
    "Api",
    "AudioPart",
    "ChatCompletion",
    "Chunk",
    "ChunkChoice",
    "ContentPart",
    "Delta",
    "FilePart",
    "FunctionCall",
    "FunctionCallDelta",
    "FunctionDef",
    "ImagePart",
    "ImageURL",
    "Message",
    "Native",
    "Request",
    "ResponseChoice",
    "ResponseMessage",
    "StreamOptions",
    "TextPart",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
    "decode_request",
    "encode_request",
]

NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


# -- request -------------------------------------------------------------------------------


class TextPart(msgspec.Struct, tag="text", tag_field="type"):
    """A text content part of a message."""

    text: str


class ImageURL(msgspec.Struct, omit_defaults=True):
    url: str
    detail: str | None = None


class ImagePart(msgspec.Struct, tag="image_url", tag_field="type"):
    """An image content part, by URL or data URL."""

    image_url: ImageURL


class AudioPart(msgspec.Struct, tag="input_audio", tag_field="type"):
    """An audio content part (base64 data and its format)."""

    input_audio: dict[str, Any]


class FilePart(msgspec.Struct, tag="file", tag_field="type"):
    """A file content part."""

    file: dict[str, Any]


ContentPart = TextPart | ImagePart | AudioPart | FilePart


class FunctionCall(msgspec.Struct):
    """A complete function call: its name and its JSON-encoded arguments."""

    name: str
    arguments: str


class ToolCall(msgspec.Struct):
    """A complete tool call made by the assistant."""

    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


class Message(msgspec.Struct, omit_defaults=True):
    """One chat message; `content` is text, a list of parts, or absent (tool calls only)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    reasoning_content: str | None = None

    @property
    def text(self) -> str:
        """The message's text: the string content, or its text parts joined."""
        content = self.content
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        return "".join(part.text for part in content if isinstance(part, TextPart))


class FunctionDef(msgspec.Struct, omit_defaults=True):
    """A function the model may call, with its JSON-schema parameters."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(msgspec.Struct):
    function: FunctionDef
    type: Literal["function"] = "function"


class StreamOptions(msgspec.Struct, omit_defaults=True):
    include_usage: bool = False


Api = Literal["chat", "messages", "responses", "embeddings", "count_tokens"]
"""The API a request came through: OpenAI chat completions (and legacy completions, which
the server turns into chat), Anthropic Messages, OpenAI Responses, OpenAI embeddings, or
Anthropic's token count."""
API_NAMES: tuple[Api, ...] = ("chat", "messages", "responses", "embeddings", "count_tokens")


class Native(msgspec.Struct, dict=True):
    """The body a client sent, kept so that an upstream of the same API receives it as sent.

    A provider that speaks the request's API (`Request.api`) sends `fields` with the model
    (and `stream`) replaced, instead of translating the typed request; a provider that does
    not translates the typed fields, and refuses the request when the door could not
    translate something (`untranslated`).

    Attributes:
      fields: the body's top-level fields, as sent (raw JSON).
      untranslated: paths of what the door could not express in the chat shape (a content
        block of a type chat has no counterpart for), first one first.

    For the chat door, `origin` (an attribute, not a field: never encoded or compared)
    holds the typed field values as decoded: a field a middleware has not replaced is
    sent from `fields`, with its nested unknown fields, and a replaced one as replaced.
    """

    fields: dict[str, msgspec.Raw]
    untranslated: tuple[str, ...] = ()

    @property
    def origin(self) -> tuple[Any, ...] | None:
        """The typed request's field values as decoded, if the door remembered them."""
        origin: tuple[Any, ...] | None = self.__dict__.get("origin")
        return origin

    def remember(self, request: Request) -> None:
        """Remember `request`'s field values as decoded (see `origin`)."""
        self.__dict__["origin"] = msgspec.structs.astuple(request)


class Request(msgspec.Struct, omit_defaults=True):
    """A model call, in the chat-completions shape whatever door it came through.

    Fields a provider may understand but this type does not name are kept in `extra`
    (decoded JSON values) and forwarded by OpenAI-compatible providers, never dropped.

    `api`, `input` and `native` are not chat fields (their wire names start with `__`):
    which API the client spoke, the embeddings input (for an `embeddings` call, whose
    `messages` are empty), and the body as the client sent it (see `Native`).
    """

    model: str
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    stop: str | list[str] | None = None
    n: PositiveInt | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    reasoning_effort: str | None = None
    extra: dict[str, Any] = msgspec.field(default_factory=dict, name="__extra__")
    api: Api = msgspec.field(default="chat", name="__api__")
    input: str | list[Any] | None = msgspec.field(default=None, name="__input__")
    native: Native | None = msgspec.field(default=None, name="__native__")

    @property
    def output_limit(self) -> int | None:
        """The most tokens the answer may have, from either spelling of the limit."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def wants_usage(self) -> bool:
        """Whether the client asked to receive usage in the stream."""
        return self.stream_options is not None and self.stream_options.include_usage


_PRIVATE = ("extra", "api", "input", "native")
_WIRE_FIELDS = tuple(f for f in Request.__struct_fields__ if f not in _PRIVATE)
_KNOWN_FIELDS = frozenset(_WIRE_FIELDS)
_UNSET: dict[str, Any] = {
    info.name: info.default
    for info in msgspec.structs.fields(Request)
    if info.name in _KNOWN_FIELDS and info.default is not msgspec.NODEFAULT
}
"""Each optional wire field's default: a field at its default is not sent."""
_request_decoder = msgspec.json.Decoder(Request)
_fields_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()

_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_MISSING = re.compile(r"Object missing required field `(?P<field>[^`]+)`")


def _field_path(message: str) -> str | None:
    """Turn msgspec's `$.messages[0].role` into `messages[0].role` (OpenAI's `param`)."""
    match = _PATH.search(message)
    path = match["path"].lstrip(".") if match else ""
    missing = _MISSING.search(message)
    if missing:
        path = f"{path}.{missing['field']}" if path else missing["field"]
    return path or None


# A `\uD800`-`\uDBFF` escape (not itself an escaped backslash's `u`) that no low surrogate
# escape follows: msgspec reports it as "Input data was truncated".
_LONE_SURROGATE = re.compile(
    rb"(?<!\\)(?:\\\\)*\\u([dD][89abAB][0-9a-fA-F]{2})(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
)


def decoding_error(exc: Exception, body: bytes | None = None) -> ValidationError:
    """The `ValidationError` for a request body that fails to decode.

    A wrong type or value names its field path; malformed JSON, nesting deeper than the
    decoder goes (`RecursionError`), and any other failure of the decoder are 400s too.
    Given the `body`, a lone surrogate escape (`"\ud800"`, which msgspec calls truncated
    input) is named as such.
    """
    if isinstance(exc, msgspec.ValidationError):
        text = str(exc)
        return ValidationError(_PATH.sub("", text), param=_field_path(text))
    if isinstance(exc, msgspec.DecodeError):
        lone = _LONE_SURROGATE.search(body) if body is not None else None
        if lone is not None:
            return ValidationError(
                "Request body is not valid JSON: lone surrogate "
                f"\\u{lone[1].decode().lower()} in a string (a high surrogate must be "
                "followed by a low one)"
            )
        return ValidationError(f"Request body is not valid JSON: {exc}")
    if isinstance(exc, RecursionError):
        return ValidationError("The request body is nested too deeply.")
    return ValidationError(f"The request body cannot be decoded: {exc}")


def decode_request(body: bytes) -> Request:
    """Decode and validate a JSON request body.

    Args:
      body: the raw JSON bytes as sent by a client.

    Returns:
      The validated request, with unknown top-level fields kept in `extra` and the body as
      sent in `native` (so that nested unknown fields reach an OpenAI-compatible upstream).

    Raises:
      ValidationError: the body is not JSON, is nested too deeply, or a field has the
        wrong type or value; the error's `param` names the field path (`messages[0].role`).
    """
    try:
        request = _request_decoder.decode(body)
        fields = _fields_decoder.decode(body)
        if len(fields) > len(_KNOWN_FIELDS) or not _KNOWN_FIELDS.issuperset(fields):
            request.extra = {
                name: _any_decoder.decode(raw)
                for name, raw in fields.items()
                if name not in _KNOWN_FIELDS
            }
    except Exception as exc:
        raise decoding_error(exc, body) from None
    # The private fields are never the client's to set.
    request.api = "chat"
    request.input = None
    native = request.native = Native(fields)
    native.remember(request)
    return request


def encode_request(request: Request, **overrides: Any) -> bytes:
    """Encode a request as OpenAI chat JSON, with its extra fields merged at the top level.

    A chat request that still has the body its client sent (`native`) is encoded from it:
    each field no middleware replaced is sent exactly as it came, nested unknown fields
    included; a replaced one is sent as replaced (or left out, when set to its default).
    The private fields (`api`, `input`, `native`) are never sent.

    Args:
      request: the request to encode.
      **overrides: top-level fields to set (or, with value None, to drop).
    """
    native = request.native
    origin = native.origin if native is not None else None
    body: dict[str, Any]
    if native is not None and origin is not None and request.api == "chat":
        body = dict(native.fields)
        values = msgspec.structs.astuple(request)
        if values != origin:
            _apply_changes(body, values, origin)
    else:
        if not request.extra and not overrides and request.api == "chat" and native is None:
            return _encoder.encode(request)
        body = msgspec.to_builtins(msgspec.structs.replace(request, native=None))
        for name in ("__extra__", "__api__", "__input__"):
            body.pop(name, None)
        body.update(request.extra)
    for name, value in overrides.items():
        if value is None:
            body.pop(name, None)
        else:
            body[name] = value
    return _encoder.encode(body)


_EXTRA_AT = Request.__struct_fields__.index("extra")


def _apply_changes(body: dict[str, Any], values: tuple[Any, ...], origin: tuple[Any, ...]) -> None:
    """Bring a body as sent up to date with the typed fields a middleware replaced."""
    for name, value, then in zip(_WIRE_FIELDS, values, origin, strict=False):
        if value is then:
            continue
        if name in _UNSET and value == _UNSET[name]:
            body.pop(name, None)
        else:
            body[name] = value
    extra = values[_EXTRA_AT]
    if extra is not origin[_EXTRA_AT]:
        for name in [name for name in body if name not in _KNOWN_FIELDS]:
            if name not in extra:
                del body[name]
        body.update(extra)


# -- response ------------------------------------------------------------------------------


class Usage(msgspec.Struct, omit_defaults=True):
    """Token usage of one call."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: dict[str, Any] | None = None
    completion_tokens_details: dict[str, Any] | None = None


class FunctionCallDelta(msgspec.Struct, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(msgspec.Struct, omit_defaults=True):
    """A fragment of a tool call; fragments with the same `index` belong together."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class Delta(msgspec.Struct, omit_defaults=True):
    """What one chunk adds to a choice; `reasoning_content` is the model's thinking (as
    DeepSeek and vLLM stream it, and as Anthropic's `thinking` blocks are translated)."""

    role: str | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    refusal: str | None = None
    reasoning_content: str | None = None


class ChunkChoice(msgspec.Struct):
    """One choice's piece of a chunk.

    `delta` is always there, empty when the upstream sent none (Azure's content-filter
    chunks have none), and is always encoded: OpenAI clients expect it.
    """

    index: int
    delta: Delta = msgspec.field(default_factory=Delta)
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


def _no_choices() -> list[ChunkChoice]:
    return []


# The wire types omit unset optional fields, but OpenAI clients expect `object`, `choices`
# (empty in the usage chunk) and the message's `role` always. msgspec omits a default only
# when it can compare it (a constant, or an empty-collection `list`/`dict` factory); a
# default made by any other factory is always encoded, so these fields use one.


class Chunk(msgspec.Struct, omit_defaults=True):
    """One streamed piece of an answer (OpenAI's `chat.completion.chunk`).

    A chunk carries text or tool-call deltas for one or more choices, a finish reason, or
    usage (usually in a final chunk with no choices).

    A provider that passes the client's API through sets `raw`: the upstream's events this
    chunk stands for, framed as server-sent events in the request's API; the door writes
    them as they came (unknown fields included) while middlewares read the typed fields.
    A chunk with `raw` and nothing typed (Anthropic's `ping`) is still forwarded. `whole`
    is the upstream's whole answer body in the request's API, on the first chunk of an
    answer that was not streamed (see `ChatCompletion.raw`). Neither is encoded as chat.
    """

    id: str
    created: int
    model: str
    choices: list[ChunkChoice] = msgspec.field(default_factory=_no_choices)
    usage: Usage | None = None
    system_fingerprint: str | None = None
    object: str = msgspec.field(default_factory=lambda: "chat.completion.chunk")
    raw: bytes | None = msgspec.field(default=None, name="__raw__")
    whole: bytes | None = msgspec.field(default=None, name="__whole__")

    @property
    def text(self) -> str:
        """The text this chunk adds to the first choice."""
        for choice in self.choices:
            if choice.index == 0:
                return choice.delta.content or ""
        return ""

    @property
    def finish_reason(self) -> str | None:
        """The finish reason of the first choice, if this chunk ends it."""
        for choice in self.choices:
            if choice.index == 0:
                return choice.finish_reason
        return None


class ResponseMessage(msgspec.Struct, omit_defaults=True):
    role: str = msgspec.field(default_factory=lambda: "assistant")
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None
    reasoning_content: str | None = None
    annotations: list[Any] | None = None


class ResponseChoice(msgspec.Struct):
    index: int
    message: ResponseMessage
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletion(msgspec.Struct, omit_defaults=True):
    """A complete, non-streamed answer (OpenAI's `chat.completion`).

    `raw` is the upstream's body as it came, in the request's API, when the provider
    passed that API through: the door answers with it, unknown fields included.
    """

    id: str
    created: int
    model: str
    choices: list[ResponseChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    object: str = msgspec.field(default_factory=lambda: "chat.completion")
    raw: bytes | None = msgspec.field(default=None, name="__raw__")

    @property
    def text(self) -> str:
        """The first choice's text."""
        for choice in self.choices:
            if choice.index == 0:
                return choice.message.content or ""
        return ""
