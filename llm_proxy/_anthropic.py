"""Anthropic's Messages API as a door: `POST /v1/messages` and its token count.

The body is decoded into the pipeline's chat-shaped `Request` (system, text, image,
document, `tool_use` / `tool_result` and `thinking` blocks, tools, `tool_choice`,
`stop_sequences`, `metadata`, `thinking`), and kept as sent in `Request.native`: an
Anthropic upstream receives it unchanged and its events come back unchanged; any other
provider gets the chat translation, and its chunks are translated back into Anthropic's
events here. What chat has no counterpart for (a server tool, a block type this module
does not know, a document by URL) is recorded in `Native.untranslated`, so that only a
provider that would have to translate it refuses it, naming it.

Errors are shaped as Anthropic's, `{"type": "error", "error": {"type", "message"}}`, with
its statuses (an overloaded or unavailable upstream is a 529 `overloaded_error`), so the
Anthropic SDK raises its usual exceptions. The mapping of every parameter is in
`docs/parameter-mapping.md`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from pipeline import (
    ChatCompletion,
    Chunk,
    ContentPart,
    FilePart,
    FunctionCall,
    FunctionDef,
    ImagePart,
    ImageURL,
    Message,
    Native,
    ProviderError,
    ProxyError,
    Request,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
    ValidationError,
    estimate_prompt_tokens,
)
from pipeline._types import _fields_decoder, decoding_error

from ._dialect import Dialect, EventEncoder

__all__ = ["COUNT_TOKENS", "MESSAGES", "decode_messages_request"]

_encoder = msgspec.json.Encoder()

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
"""OpenAI finish reason -> Anthropic stop reason (anything else: `end_turn`)."""

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
"""HTTP status -> Anthropic error type (other 4xx: invalid_request_error, 5xx: api_error)."""

EFFORTS = ((2048, "low"), (8192, "medium"))
"""`thinking.budget_tokens` below each bound -> `reasoning_effort` (above all: `high`)."""


# -- requests -------------------------------------------------------------------------------


class _Source(msgspec.Struct):
    type: str
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class _Block(msgspec.Struct):
    """Any content block: which fields matter depends on `type`; unknown types are kept
    for a native upstream and recorded as untranslated."""

    type: str
    text: str | None = None
    source: _Source | None = None
    title: str | None = None
    id: str | None = None
    name: str | None = None
    input: msgspec.Raw = msgspec.Raw(b"")
    tool_use_id: str | None = None
    content: str | list[_Block] | None = None
    is_error: bool | None = None
    thinking: str | None = None


class _MessageParam(msgspec.Struct):
    role: Literal["user", "assistant"]
    content: str | list[_Block]


class _Tool(msgspec.Struct):
    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None


class _ToolChoice(msgspec.Struct):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class _Thinking(msgspec.Struct):
    type: str
    budget_tokens: int | None = None


class _Metadata(msgspec.Struct):
    user_id: str | None = None


class _MessagesBody(msgspec.Struct):
    model: str
    messages: Annotated[list[_MessageParam], msgspec.Meta(min_length=1)]
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    system: str | list[_Block] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, msgspec.Meta(ge=0)] | None = None
    tools: list[_Tool] | None = None
    tool_choice: _ToolChoice | None = None
    metadata: _Metadata | None = None
    thinking: _Thinking | None = None


_body_decoder = msgspec.json.Decoder(_MessagesBody)
_KNOWN = frozenset(_MessagesBody.__struct_fields__)
_any_decoder = msgspec.json.Decoder()


class _Translation:
    """The chat messages a Messages body stands for, and what could not be translated."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.untranslated: list[str] = []

    def skip(self, path: str) -> None:
        self.untranslated.append(path)

    def system(self, system: str | list[_Block] | None) -> None:
        if system is None:
            return
        if isinstance(system, str):
            text = system
        else:
            parts = []
            for j, block in enumerate(system):
                if block.type == "text" and block.text is not None:
                    parts.append(block.text)
                else:
                    self.skip(f"system[{j}]")
            text = "\n\n".join(parts)
        if text:
            self.messages.append(Message(role="system", content=text))

    def parts(self, blocks: list[_Block], path: str) -> list[ContentPart]:
        parts: list[ContentPart] = []
        for j, block in enumerate(blocks):
            part = self.part(block, f"{path}[{j}]")
            if part is not None:
                parts.append(part)
        return parts

    def part(self, block: _Block, path: str) -> ContentPart | None:
        source = block.source
        if block.type == "text":
            return TextPart(block.text or "")
        if block.type == "image" and source is not None:
            if source.type == "base64" and source.data is not None:
                url = f"data:{source.media_type};base64,{source.data}"
                return ImagePart(ImageURL(url))
            if source.type == "url" and source.url is not None:
                return ImagePart(ImageURL(source.url))
        if block.type == "document" and source is not None:
            if source.type == "text" and source.data is not None:
                return TextPart(source.data)
            if source.type == "base64" and source.data is not None:
                data = f"data:{source.media_type};base64,{source.data}"
                return FilePart({"filename": block.title or "document", "file_data": data})
        self.skip(path)
        return None

    def user(self, content: list[_Block], path: str) -> None:
        # Tool results become tool messages, which must follow the assistant's calls.
        rest: list[_Block] = []
        for j, block in enumerate(content):
            if block.type != "tool_result":
                rest.append(block)
                continue
            result = block.content
            text: str | list[ContentPart]
            if result is None or isinstance(result, str):
                text = result or ""
            else:
                text = self.parts(result, f"{path}[{j}].content")
            if block.is_error and isinstance(text, str):
                text = f"Error: {text}"
            self.messages.append(
                Message(role="tool", content=text, tool_call_id=block.tool_use_id or "")
            )
        if rest:
            parts = self.parts(rest, path)
            if parts:
                self.messages.append(Message(role="user", content=parts))

    def assistant(self, content: list[_Block], path: str) -> None:
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[ToolCall] = []
        for j, block in enumerate(content):
            if block.type == "text":
                texts.append(block.text or "")
            elif block.type == "thinking":
                thoughts.append(block.thinking or "")
            elif block.type == "redacted_thinking":
                continue  # opaque: only Anthropic can read it (see the mapping table)
            elif block.type == "tool_use":
                arguments = bytes(block.input).decode() if block.input else "{}"
                calls.append(ToolCall(block.id or "", FunctionCall(block.name or "", arguments)))
            else:
                self.skip(f"{path}[{j}]")
        self.messages.append(
            Message(
                role="assistant",
                content="".join(texts) if texts or not calls else None,
                tool_calls=calls or None,
                reasoning_content="".join(thoughts) if thoughts else None,
            )
        )


def _tool_choice(choice: _ToolChoice | None) -> str | dict[str, Any] | None:
    if choice is None:
        return None
    if choice.type == "any":
        return "required"
    if choice.type == "tool":
        if not choice.name:
            raise ValidationError("a `tool` tool_choice names its tool", param="tool_choice.name")
        return {"type": "function", "function": {"name": choice.name}}
    return choice.type


def _effort(thinking: _Thinking | None) -> str | None:
    if thinking is None or thinking.type == "disabled":
        return None
    budget = thinking.budget_tokens
    if budget is None:
        return "medium"
    for bound, effort in EFFORTS:
        if budget < bound:
            return effort
    return "high"


def _decode(body: bytes, api: Literal["messages", "count_tokens"]) -> Request:
    try:
        typed = _body_decoder.decode(body)
        fields = _fields_decoder.decode(body)
    except Exception as exc:
        raise decoding_error(exc, body) from None
    if api == "messages" and typed.max_tokens is None:
        raise ValidationError("Object missing required field `max_tokens`", param="max_tokens")
    translation = _Translation()
    translation.system(typed.system)
    for i, message in enumerate(typed.messages):
        content = message.content
        path = f"messages[{i}].content"
        if isinstance(content, str):
            translation.messages.append(Message(role=message.role, content=content))
        elif message.role == "user":
            translation.user(content, path)
        else:
            translation.assistant(content, path)
    tools = None
    if typed.tools is not None:
        tools = []
        for i, tool in enumerate(typed.tools):
            if tool.type not in (None, "custom"):
                translation.skip(f"tools[{i}]")
                continue
            schema = tool.input_schema or {"type": "object", "properties": {}}
            tools.append(Tool(FunctionDef(tool.name, tool.description, schema)))
    choice = typed.tool_choice
    extra = {name: _any_decoder.decode(raw) for name, raw in fields.items() if name not in _KNOWN}
    if typed.top_k is not None:
        extra["top_k"] = typed.top_k
    return Request(
        model=typed.model,
        messages=translation.messages,
        max_tokens=typed.max_tokens,
        stop=typed.stop_sequences or None,
        temperature=typed.temperature,
        top_p=typed.top_p,
        tools=tools or None,
        tool_choice=_tool_choice(choice),
        parallel_tool_calls=False if choice and choice.disable_parallel_tool_use else None,
        user=typed.metadata.user_id if typed.metadata else None,
        reasoning_effort=_effort(typed.thinking),
        stream=typed.stream and api == "messages",
        extra=extra,
        api=api,
        native=Native(fields, tuple(translation.untranslated)),
    )


def decode_messages_request(body: bytes) -> Request:
    """Decode a Messages API body into a `messages` call of the pipeline.

    Raises:
      ValidationError: the body is not a Messages request (`param` names the field).
    """
    return _decode(body, "messages")


def decode_count_request(body: bytes) -> Request:
    """Decode a token-count body (a Messages body without `max_tokens`).

    Raises:
      ValidationError: the body is not a Messages request (`param` names the field).
    """
    return _decode(body, "count_tokens")


# -- answers --------------------------------------------------------------------------------


def _message_id(answer_id: str) -> str:
    return answer_id if answer_id.startswith("msg_") else f"msg_{answer_id}"


def _usage(usage: Usage | None, estimate: int = 0) -> dict[str, int]:
    if usage is None:
        return {"input_tokens": estimate, "output_tokens": 0}
    cached = (usage.prompt_tokens_details or {}).get("cached_tokens") or 0
    result = {
        "input_tokens": usage.prompt_tokens - cached,
        "output_tokens": usage.completion_tokens,
    }
    if cached:
        result["cache_read_input_tokens"] = cached
    return result


def _whole(answer: ChatCompletion, request: Request) -> bytes:
    if answer.raw is not None:
        return answer.raw
    content: list[dict[str, Any]] = []
    stop = None
    for choice in answer.choices:
        if choice.index != 0:
            continue
        message = choice.message
        if message.reasoning_content:
            thinking = {"type": "thinking", "thinking": message.reasoning_content}
            content.append({**thinking, "signature": ""})
        if message.content:
            content.append({"type": "text", "text": message.content})
        for call in message.tool_calls or ():
            arguments = msgspec.Raw(call.function.arguments.encode() or b"{}")
            content.append(
                {"type": "tool_use", "id": call.id, "name": call.function.name, "input": arguments}
            )
        stop = STOP_REASONS.get(choice.finish_reason or "", "end_turn")
    return _encoder.encode(
        {
            "id": _message_id(answer.id),
            "type": "message",
            "role": "assistant",
            "model": answer.model or request.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": _usage(answer.usage),
        }
    )


def _event(name: bytes, data: dict[str, Any]) -> bytes:
    return b"event: " + name + b"\ndata: " + _encoder.encode(data) + b"\n\n"


_PING = _event(b"ping", {"type": "ping"})


_DELTAS = {
    "thinking": ("thinking_delta", "thinking"),
    "text": ("text_delta", "text"),
    "tool": ("input_json_delta", "partial_json"),
}
"""A block kind -> its delta's type and the delta's field that carries the piece."""


def _delta_of(kind: str, piece: str) -> dict[str, Any]:
    kind_delta, field = _DELTAS[kind]
    return {"type": kind_delta, field: piece}


def _empty_block(kind: str) -> dict[str, Any]:
    return {"type": kind, kind: ""}


class _HeldBlock:
    """A block whose pieces wait for the end of the stream (see `_MessageEvents`)."""

    __slots__ = ("block", "kind", "pieces")

    def __init__(self, kind: str, block: dict[str, Any]) -> None:
        self.kind = kind
        self.block = block
        self.pieces: list[str] = []


class _MessageEvents:
    """Translates chat chunks into Anthropic's events, in Anthropic's order.

    `message_start` (with the estimated input usage) and a `ping` first; then one block
    per run of thinking, text, or each tool call: `content_block_start`, its deltas
    (`thinking_delta`, `text_delta`, `input_json_delta`), `content_block_stop`; at the end
    `message_delta` with the stop reason and the usage, and `message_stop`. A stream whose
    chunks carry Anthropic's own events (`Chunk.raw`) is written as it came.

    Blocks never overlap, as in Anthropic's own streams: one is started, gets its deltas
    and is stopped before the next starts. Chat streams do not promise that a tool call's
    arguments are finished when the next call starts (a provider may send a piece of an
    earlier call late), so a tool call's block stays open until the stream ends: the first
    tool call streams as it comes, and whatever comes after it (more tool calls, text,
    thinking) is held and written at the end, each tool call's pieces under its own block.
    """

    __slots__ = (
        "_block",
        "_held",
        "_held_tools",
        "_kind",
        "_live_tool",
        "_model",
        "_native",
        "_request",
        "_started",
        "_stop",
        "_usage",
    )

    def __init__(self, request: Request) -> None:
        self._request = request
        self._model = request.model
        self._native = False
        self._started = False
        self._block = -1
        self._kind: str | None = None
        # The chat index of the tool call whose block is open; from then on the rest waits.
        self._live_tool: int | None = None
        self._held: list[_HeldBlock] = []
        self._held_tools: dict[int, _HeldBlock] = {}
        self._stop = "end_turn"
        self._usage: Usage | None = None

    def _start(self, answer_id: str, model: str, out: list[bytes]) -> None:
        self._started = True
        message: dict[str, Any] = {
            "id": _message_id(answer_id),
            "type": "message",
            "role": "assistant",
            "model": model or self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(None, estimate_prompt_tokens(self._request)),
        }
        out.append(_event(b"message_start", {"type": "message_start", "message": message}))
        out.append(_PING)

    def _open(self, kind: str, block: dict[str, Any], out: list[bytes]) -> int:
        self._close(out)
        self._block += 1
        self._kind = kind
        start = {"type": "content_block_start", "index": self._block, "content_block": block}
        out.append(_event(b"content_block_start", start))
        return self._block

    def _close(self, out: list[bytes]) -> None:
        if self._kind is not None:
            stop = {"type": "content_block_stop", "index": self._block}
            out.append(_event(b"content_block_stop", stop))
            self._kind = None

    def _delta(self, index: int, delta: dict[str, Any], out: list[bytes]) -> None:
        event = {"type": "content_block_delta", "index": index, "delta": delta}
        out.append(_event(b"content_block_delta", event))

    def _prose(self, kind: str, piece: str, out: list[bytes]) -> None:
        """A piece of thinking or text: into the open block of its kind, or a new one."""
        if self._live_tool is not None:
            held = self._held[-1] if self._held else None
            if held is None or held.kind != kind:
                held = _HeldBlock(kind, _empty_block(kind))
                self._held.append(held)
            held.pieces.append(piece)
            return
        if self._kind != kind:
            self._open(kind, _empty_block(kind), out)
        self._delta(self._block, _delta_of(kind, piece), out)

    def _tool(self, call: ToolCallDelta, answer_id: str, out: list[bytes]) -> None:
        """A piece of a tool call: live if its block is the open one, else held."""
        function = call.function
        arguments = function.arguments if function is not None else None
        if call.index == self._live_tool:
            if arguments:
                self._delta(self._block, _delta_of("tool", arguments), out)
            return
        held = self._held_tools.get(call.index)
        if held is None:
            block = {
                "type": "tool_use",
                "id": call.id or f"toolu_{answer_id}_{call.index}",
                "name": function.name if function and function.name else "",
                "input": {},
            }
            if self._live_tool is None:
                self._live_tool = call.index
                self._open("tool", block, out)
                if arguments:
                    self._delta(self._block, _delta_of("tool", arguments), out)
                return
            held = self._held_tools[call.index] = _HeldBlock("tool", block)
            self._held.append(held)
        elif function is not None and function.name and not held.block["name"]:
            held.block["name"] = function.name
        if arguments:
            held.pieces.append(arguments)

    def event(self, chunk: Chunk) -> bytes:
        if chunk.raw is not None:
            self._native = True
            return chunk.raw
        if self._native:
            return b""  # the pipeline's own piece of a native stream (an estimated usage)
        out: list[bytes] = []
        if not self._started:
            self._start(chunk.id, chunk.model, out)
        if chunk.usage is not None:
            self._usage = chunk.usage
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            delta = choice.delta
            if delta.reasoning_content:
                self._prose("thinking", delta.reasoning_content, out)
            if delta.content:
                self._prose("text", delta.content, out)
            for call in delta.tool_calls or ():
                self._tool(call, chunk.id, out)
            if choice.finish_reason is not None:
                self._stop = STOP_REASONS.get(choice.finish_reason, "end_turn")
        return b"".join(out)

    def done(self) -> bytes:
        if self._native:
            return b""
        out: list[bytes] = []
        if not self._started:
            self._start("", "", out)
        # No piece can come any more: the open block ends, and the held ones follow it.
        for held in self._held:
            index = self._open(held.kind, held.block, out)
            if held.pieces:
                self._delta(index, _delta_of(held.kind, "".join(held.pieces)), out)
        self._close(out)
        delta = {"stop_reason": self._stop, "stop_sequence": None}
        usage = _usage(self._usage, estimate_prompt_tokens(self._request))
        out.append(
            _event(b"message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        )
        out.append(_event(b"message_stop", {"type": "message_stop"}))
        return b"".join(out)


def _events(request: Request) -> EventEncoder:
    return _MessageEvents(request)


def _count_whole(answer: ChatCompletion, request: Request) -> bytes:
    if answer.raw is not None:
        return answer.raw
    return _encoder.encode({"input_tokens": estimate_prompt_tokens(request)})


# -- errors ---------------------------------------------------------------------------------


def status(error: ProxyError) -> int:
    """The status Anthropic would answer `error` with: 529 for an overloaded upstream."""
    if error.status == 503:
        return 529
    if isinstance(error, ProviderError) and error.upstream_status == 529:
        return 529
    return error.status


def _error_type(error: ProxyError) -> str:
    code = status(error)
    default = "api_error" if code >= 500 else "invalid_request_error"
    return ERROR_TYPES.get(code, default)


def error_json(error: ProxyError) -> bytes:
    """`error` in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`."""
    return _encoder.encode(
        {"type": "error", "error": {"type": _error_type(error), "message": error.message}}
    )


def _error_event(error: ProxyError) -> bytes:
    return b"event: error\ndata: " + error_json(error) + b"\n\n"


MESSAGES = Dialect(
    name="messages",
    decode=decode_messages_request,
    events=_events,
    whole=_whole,
    error=error_json,
    error_event=_error_event,
    status=status,
)
"""`POST /v1/messages`: Anthropic's Messages API."""
COUNT_TOKENS = Dialect(
    name="count_tokens",
    decode=decode_count_request,
    events=_events,
    whole=_count_whole,
    error=error_json,
    error_event=_error_event,
    status=status,
)
"""`POST /v1/messages/count_tokens`: counted by an Anthropic upstream, else estimated."""
