"""Anthropic's Messages API, translated to and from the OpenAI shape.

Requests: system and developer messages become the top-level `system`; tool calls become
`tool_use` blocks and tool messages `tool_result` blocks in a user turn; messages without
content are left out and consecutive messages of one role are merged into one turn (the
API refuses empty turns and wants turns to alternate); empty stop sequences are dropped;
images given as data URLs become base64 image blocks, other URLs URL image blocks;
`max_tokens`, which the API requires, defaults to the provider's `max_tokens` option.

Streams: `message_start` opens the answer (a role chunk) and brings the input usage;
`content_block_start/delta/stop` carry text and tool use (one OpenAI tool-call index per
`tool_use` block; its id and name first, then `input_json_delta` fragments as argument
fragments); `message_delta` brings the stop reason (a finish chunk) and output usage;
`message_stop` ends the answer with the usage chunk; `thinking` blocks become
`reasoning_content`. `ping` and event types this module does not know are skipped, as
Anthropic's versioning policy asks; an `error` event becomes the matching `ProviderError`
before the first chunk and a `StreamError` after it.

A parameter Anthropic cannot honour is never dropped: `reasoning_effort` becomes
`thinking`; `seed`, non-zero penalties, `logit_bias`, `logprobs`, a `response_format`
other than text and `n` > 1 are refused with a 400 naming them; of the unknown request
fields, Anthropic's own (`top_k`, `metadata`, `thinking`, ...) are forwarded and any other
is refused. The whole table is in `docs/parameter-mapping.md`.

A request that came through the Messages door (`Request.api == "messages"`) is not
translated at all: its body goes up as the client sent it (with the pipeline's model), and
the upstream's events come back as they are (`Chunk.raw`), with the typed chunks the
middlewares read alongside. So does a token count (`/v1/messages/count_tokens`).
"""

from __future__ import annotations

import re
import time
from typing import Any

import msgspec

from pipeline import (
    ChatCompletion,
    Chunk,
    ChunkChoice,
    ContentPart,
    Context,
    Delta,
    FunctionCall,
    FunctionCallDelta,
    ImagePart,
    Message,
    Request,
    ResponseChoice,
    ResponseMessage,
    ResponseStream,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Usage,
    ValidationError,
)

from ._events import UpstreamEventError
from ._http import HTTPProvider
from ._native import RawEvents, decode_answer, native_body
from ._sse import ServerSentEvent

__all__ = ["AnthropicOptions", "AnthropicProvider", "to_messages_request"]

DEFAULT_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
"""Anthropic stop reason -> OpenAI finish reason (anything else: `stop`)."""

ERROR_STATUSES = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
"""Anthropic error type -> the HTTP status Anthropic uses for it."""

_FORWARDED_EXTRAS = (
    "top_k",
    "metadata",
    "service_tier",
    "thinking",
    "container",
    "mcp_servers",
    "context_management",
)
"""Unknown chat fields that are Anthropic's own parameters: forwarded as they are."""
_HARMLESS_EXTRAS = {"store": (False, None)}
"""OpenAI parameters whose value asks for nothing Anthropic would do differently."""
THINKING_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384, "xhigh": 32768}
"""`reasoning_effort` -> Anthropic's `thinking.budget_tokens` (`minimal`, `none`: off)."""
_COUNT_DROPPED = (
    "max_tokens",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "metadata",
    "service_tier",
)
"""Fields of a Messages body that the token-count endpoint does not take."""
_DATA_URL = re.compile(r"data:(?P<type>[^;,]+);base64,(?P<data>.*)", re.S)
_encoder = msgspec.json.Encoder()


class AnthropicOptions(msgspec.Struct, forbid_unknown_fields=True):
    """The `options` an `anthropic` provider understands."""

    version: str = DEFAULT_VERSION
    """The `anthropic-version` header."""
    max_tokens: int = DEFAULT_MAX_TOKENS
    """`max_tokens` for requests that set no limit (the API requires one)."""


class AnthropicProvider(HTTPProvider):
    """Anthropic's Messages API behind the OpenAI chat-completions shape.

    Sends `POST {base_url}/v1/messages` with `x-api-key` and `anthropic-version`, and
    translates the request, the event stream and the whole answer (see the module's
    docstring). Usage counts cache reads and writes as prompt tokens; cache reads are
    also reported as `prompt_tokens_details.cached_tokens`. `validate()` lists the models
    (`GET {base_url}/v1/models`).

    Args:
      base_url: the API root, without `/v1` (default: Anthropic's).
      version: the `anthropic-version` header.
      max_tokens: the output limit for requests that set none.
      headers: extra headers for every request.
      **kwargs: as for `HTTPProvider`.
    """

    kind = "anthropic"
    default_base_url = "https://api.anthropic.com"
    chat_path = "/v1/messages"
    validate_path = "/v1/models"
    Options = AnthropicOptions
    native_apis = frozenset({"messages", "count_tokens"})

    def __init__(
        self,
        base_url: str | None = None,
        *,
        version: str = DEFAULT_VERSION,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.version = version
        self.max_tokens = max_tokens
        headers = {**(headers or {}), "anthropic-version": version}
        super().__init__(base_url, headers=headers, **kwargs)

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key}

    async def execute(self, request: Request, ctx: Context) -> ResponseStream:
        if request.native is not None and request.api == "count_tokens":
            return await self._count_tokens(request, ctx)
        native = request.native is not None and request.api == "messages"
        if native:
            fields = {"stream": True} if request.stream else {}
            body = native_body(request, drop=("stream",), **fields)
        else:
            body = _encoder.encode(to_messages_request(request, self.max_tokens))
        if request.stream:
            call = await self.post(self._chat_url, body, ctx, stream=True)
            return self.stream_events(call, _AnthropicEvents(request, native=native))
        if not native:
            message = await self.fetch(self._chat_url, body, ctx, _message_decoder)
            return ResponseStream.from_response(_to_completion(message))
        data = await self.read_body(await self.post(self._chat_url, body, ctx, stream=False))
        message = decode_answer(data, _message_decoder, provider=self.name, redact=self._redact)
        answer = _to_completion(message)
        answer.raw = data
        return ResponseStream.from_response(answer)

    async def _count_tokens(self, request: Request, ctx: Context) -> ResponseStream:
        url = self._chat_url + "/count_tokens"
        body = native_body(request, drop=_COUNT_DROPPED)
        data = await self.read_body(await self.post(url, body, ctx, stream=False))
        # Counting is free: no usage, so that rate limits charge nothing for it.
        answer = ChatCompletion("count", int(time.time()), request.model, [], Usage(), raw=data)
        return ResponseStream.from_response(answer)


# -- requests ------------------------------------------------------------------------------


def to_messages_request(request: Request, default_max_tokens: int) -> dict[str, Any]:
    """Translate a chat-completions request into a Messages API body.

    Raises:
      ValidationError: the request asks for something the Messages API cannot do (`n` > 1,
        audio parts, an unknown `tool_choice`, tool-call arguments that are not JSON); its
        `param` names the field.
    """
    if request.n is not None and request.n > 1:
        raise ValidationError("Anthropic models answer with one choice only", param="n")
    _refuse_unmappable(request)
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(request.messages):
        role = message.role
        if role in ("system", "developer"):
            system.append(message.text)
            continue
        if role == "tool":
            role = "user"
            blocks = [_tool_result(message, i)]
        else:
            blocks = _content_blocks(message.content, f"messages[{i}].content")
            if role == "assistant" and message.tool_calls:
                blocks.extend(_tool_use(message, i))
            if not blocks:
                continue  # the API refuses a turn without content
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        content = turn["content"]
        if len(content) == 1 and content[0]["type"] == "text":
            turn["content"] = content[0]["text"]

    body: dict[str, Any] = {
        "model": request.model,
        "messages": turns,
        "max_tokens": request.output_limit or default_max_tokens,
    }
    effort = request.reasoning_effort
    if effort is not None and effort not in ("none", "minimal"):
        budget = THINKING_BUDGETS.get(effort)
        if budget is None:
            raise ValidationError(
                f"reasoning_effort must be one of none, minimal, {', '.join(THINKING_BUDGETS)}",
                param="reasoning_effort",
            )
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if body["max_tokens"] <= budget:
            # Anthropic counts thinking in max_tokens, which must exceed the budget.
            body["max_tokens"] += budget
    if system:
        body["system"] = "\n\n".join(system)
    stops = [request.stop] if isinstance(request.stop, str) else request.stop or []
    stops = [stop for stop in stops if stop]  # the API refuses an empty stop sequence
    if stops:
        body["stop_sequences"] = stops
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.tools:
        body["tools"] = [
            {
                "name": tool.function.name,
                **({"description": tool.function.description} if tool.function.description else {}),
                "input_schema": tool.function.parameters or {"type": "object", "properties": {}},
            }
            for tool in request.tools
        ]
    choice = _tool_choice(request)
    if choice is not None:
        body["tool_choice"] = choice
    if request.user is not None:
        body["metadata"] = {"user_id": request.user}
    for name, value in request.extra.items():
        if name in _FORWARDED_EXTRAS:
            if name == "metadata" and isinstance(value, dict):
                value = {**body.get("metadata", {}), **value}
            body[name] = value
        elif value not in _HARMLESS_EXTRAS.get(name, ()):
            raise ValidationError(
                f"Anthropic has no parameter `{name}`; leave it out for this model",
                param=name,
            )
    if request.stream:
        body["stream"] = True
    return body


def _refuse_unmappable(request: Request) -> None:
    """Refuse, naming it, an OpenAI parameter Anthropic cannot honour.

    Raises:
      ValidationError: `seed`, a non-zero penalty, `logit_bias`, `logprobs`,
        `top_logprobs` or a `response_format` other than text is set.
    """
    refused: list[tuple[str, str]] = []
    if request.seed is not None:
        refused.append(("seed", "Anthropic models cannot be seeded"))
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(request, name):
            refused.append((name, "Anthropic models have no sampling penalties"))
    if request.logit_bias:
        refused.append(("logit_bias", "Anthropic models take no logit bias"))
    if request.logprobs or request.top_logprobs:
        name = "logprobs" if request.logprobs else "top_logprobs"
        refused.append((name, "Anthropic models do not return log probabilities"))
    if request.response_format is not None and request.response_format.get("type") != "text":
        refused.append(
            ("response_format", "Anthropic models take no response_format; ask in the prompt")
        )
    if refused:
        name, why = refused[0]
        raise ValidationError(f"{why}: leave `{name}` out for this model", param=name)


def _content_blocks(content: str | list[ContentPart] | None, param: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for j, part in enumerate(content):
        if isinstance(part, TextPart):
            blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            blocks.append(_image_block(part.image_url.url, f"{param}[{j}]"))
        else:
            raise ValidationError(
                f"Anthropic does not accept `{type(part).__struct_config__.tag}` content parts",
                param=f"{param}[{j}]",
            )
    return blocks


def _image_block(url: str, param: str) -> dict[str, Any]:
    if url.startswith("data:"):
        match = _DATA_URL.fullmatch(url)
        if match is None:
            raise ValidationError("an image data URL must be base64-encoded", param=param)
        source = {"type": "base64", "media_type": match["type"], "data": match["data"]}
    else:
        source = {"type": "url", "url": url}
    return {"type": "image", "source": source}


def _tool_use(message: Message, i: int) -> list[dict[str, Any]]:
    blocks = []
    for j, call in enumerate(message.tool_calls or ()):
        arguments = call.function.arguments
        try:
            tool_input = msgspec.json.decode(arguments) if arguments.strip() else {}
        except msgspec.DecodeError:
            raise ValidationError(
                "tool call arguments must be a JSON object",
                param=f"messages[{i}].tool_calls[{j}].function.arguments",
            ) from None
        blocks.append(
            {"type": "tool_use", "id": call.id, "name": call.function.name, "input": tool_input}
        )
    return blocks


def _tool_result(message: Message, i: int) -> dict[str, Any]:
    if message.tool_call_id is None:
        raise ValidationError(
            "a tool message needs the tool_call_id it answers", param=f"messages[{i}].tool_call_id"
        )
    content: str | list[dict[str, Any]] = (
        message.content
        if isinstance(message.content, str)
        else _content_blocks(message.content, f"messages[{i}].content")
    )
    return {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": content}


def _tool_choice(request: Request) -> dict[str, Any] | None:
    choice = request.tool_choice
    result: dict[str, Any] | None
    if choice is None:
        result = None
    elif choice == "auto":
        result = {"type": "auto"}
    elif choice == "required":
        result = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), dict)
        and isinstance(choice["function"].get("name"), str)
    ):
        result = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise ValidationError(
            "tool_choice must be `auto`, `required`, `none` or a function", param="tool_choice"
        )
    if request.parallel_tool_calls is False and request.tools:
        result = result or {"type": "auto"}
        result["disable_parallel_tool_use"] = True
    return result


# -- answers -------------------------------------------------------------------------------


class _Usage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


def _usage(usage: _Usage) -> Usage:
    cached = usage.cache_read_input_tokens or 0
    prompt = usage.input_tokens + (usage.cache_creation_input_tokens or 0) + cached
    details = {"cached_tokens": cached} if cached else None
    return Usage(prompt, usage.output_tokens, prompt + usage.output_tokens, details)


class _Block(msgspec.Struct):
    type: str
    text: str | None = None
    thinking: str | None = None
    id: str | None = None
    name: str | None = None
    input: msgspec.Raw = msgspec.Raw()


class _Message(msgspec.Struct):
    id: str
    model: str
    content: list[_Block] = msgspec.field(default_factory=list)
    stop_reason: str | None = None
    usage: _Usage = msgspec.field(default_factory=_Usage)


_message_decoder = msgspec.json.Decoder(_Message)


def _arguments(raw: msgspec.Raw) -> str:
    return bytes(raw).decode() if raw else "{}"


def _to_completion(message: _Message) -> ChatCompletion:
    texts = [block.text for block in message.content if block.type == "text" and block.text]
    tool_calls = [
        ToolCall(block.id or "", FunctionCall(block.name or "", _arguments(block.input)))
        for block in message.content
        if block.type == "tool_use"
    ]
    content = "".join(texts) if texts or not tool_calls else None
    thoughts = [block.thinking for block in message.content if block.type == "thinking"]
    reasoning = "".join(t for t in thoughts if t) if thoughts else None
    finish = STOP_REASONS.get(message.stop_reason or "", "stop")
    return ChatCompletion(
        id=message.id,
        created=int(time.time()),
        model=message.model,
        choices=[
            ResponseChoice(
                0,
                ResponseMessage(
                    content=content, tool_calls=tool_calls or None, reasoning_content=reasoning
                ),
                finish,
            )
        ],
        usage=_usage(message.usage),
    )


# -- streams -------------------------------------------------------------------------------


class _MessageHead(msgspec.Struct):
    id: str
    model: str
    usage: _Usage = msgspec.field(default_factory=_Usage)


class _MessageStart(msgspec.Struct):
    message: _MessageHead


class _BlockStart(msgspec.Struct):
    index: int
    content_block: _Block


class _BlockDeltaBody(msgspec.Struct):
    type: str
    text: str | None = None
    thinking: str | None = None
    partial_json: str | None = None


class _BlockDelta(msgspec.Struct):
    index: int
    delta: _BlockDeltaBody


class _BlockStop(msgspec.Struct):
    index: int


class _StopInfo(msgspec.Struct):
    stop_reason: str | None = None


class _DeltaUsage(msgspec.Struct):
    output_tokens: int | None = None
    input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class _MessageDelta(msgspec.Struct):
    delta: _StopInfo
    usage: _DeltaUsage | None = None


class _ErrorInfo(msgspec.Struct):
    type: str = "api_error"
    message: str = ""


class _ErrorEvent(msgspec.Struct):
    error: _ErrorInfo = msgspec.field(default_factory=_ErrorInfo)


class _Typed(msgspec.Struct):
    type: str


_block_delta_decoder = msgspec.json.Decoder(_BlockDelta)
_block_start_decoder = msgspec.json.Decoder(_BlockStart)
_block_stop_decoder = msgspec.json.Decoder(_BlockStop)
_message_start_decoder = msgspec.json.Decoder(_MessageStart)
_message_delta_decoder = msgspec.json.Decoder(_MessageDelta)
_error_decoder = msgspec.json.Decoder(_ErrorEvent)
_typed_decoder = msgspec.json.Decoder(_Typed)


class _AnthropicEvents:
    """Translates Messages API events into OpenAI-shaped chunks.

    With `native` (a Messages client), each chunk also carries its event as it came, and
    every event reaches the client, `ping` and the kinds this module does not know too.
    """

    __slots__ = (
        "_created",
        "_finish",
        "_id",
        "_model",
        "_no_arguments",
        "_raw",
        "_tools",
        "_usage",
        "_usage_sent",
        "done",
    )

    def __init__(self, request: Request, *, native: bool = False) -> None:
        self._raw = RawEvents(self._empty) if native else None
        self._id = ""
        self._model = request.model
        self._created = int(time.time())
        self._usage = _Usage()
        self._finish: str | None = None
        self._usage_sent = False
        # content block index -> tool-call index, for tool_use blocks
        self._tools: dict[int, int] = {}
        # tool_use blocks that have not received any argument text yet
        self._no_arguments: set[int] = set()
        self.done = False

    def _chunk(self, delta: Delta, finish: str | None = None) -> Chunk:
        return Chunk(self._id, self._created, self._model, [ChunkChoice(0, delta, finish)])

    def _empty(self) -> Chunk:
        return Chunk(self._id, self._created, self._model)

    def feed(self, event: ServerSentEvent) -> Chunk | None:
        if event.event == "message":
            # A stream without `event:` lines: the type is in the data.
            name = _typed_decoder.decode(event.data).type
            if name == "message":
                return None
            event = _named(event, name)
        chunk = self._translate(event)
        return chunk if self._raw is None else self._raw.attach(chunk, event)

    def _translate(self, event: ServerSentEvent) -> Chunk | None:
        name = event.event
        if name == "content_block_delta":
            block_delta = _block_delta_decoder.decode(event.data)
            delta = block_delta.delta
            if delta.type == "text_delta":
                return self._chunk(Delta(content=delta.text or ""))
            if delta.type == "input_json_delta":
                tool = self._tools.get(block_delta.index)
                if tool is None or not delta.partial_json:
                    return None
                self._no_arguments.discard(block_delta.index)
                return self._tool_chunk(ToolCallDelta(tool, function=_args(delta.partial_json)))
            if delta.type == "thinking_delta" and delta.thinking:
                return self._chunk(Delta(reasoning_content=delta.thinking))
            return None  # signatures, citations: not part of the OpenAI shape
        if name == "message_start":
            head = _message_start_decoder.decode(event.data).message
            self._id = head.id
            self._model = head.model or self._model
            self._usage = head.usage
            return self._chunk(Delta(role="assistant", content=""))
        if name == "content_block_start":
            start = _block_start_decoder.decode(event.data)
            block = start.content_block
            if block.type == "text":
                return self._chunk(Delta(content=block.text)) if block.text else None
            if block.type == "thinking":
                thinking = block.thinking
                return self._chunk(Delta(reasoning_content=thinking)) if thinking else None
            if block.type == "tool_use":
                tool = self._tools[start.index] = len(self._tools)
                arguments = bytes(block.input).decode() if block.input else ""
                if arguments in ("", "{}"):
                    arguments = ""
                    self._no_arguments.add(start.index)
                function = FunctionCallDelta(name=block.name or "", arguments=arguments)
                return self._tool_chunk(ToolCallDelta(tool, block.id, "function", function))
            return None
        if name == "content_block_stop":
            index = _block_stop_decoder.decode(event.data).index
            if index in self._no_arguments:
                # A tool called without arguments: OpenAI gives `{}`, not an empty string.
                self._no_arguments.discard(index)
                return self._tool_chunk(ToolCallDelta(self._tools[index], function=_args("{}")))
            return None
        if name == "message_delta":
            message_delta = _message_delta_decoder.decode(event.data)
            if message_delta.usage is not None:
                self._update_usage(message_delta.usage)
            reason = message_delta.delta.stop_reason
            if reason is None:
                return None
            self._finish = STOP_REASONS.get(reason, "stop")
            return self._chunk(Delta(), self._finish)
        if name == "message_stop":
            self.done = True
            return self._usage_chunk()
        if name == "error":
            error = _error_decoder.decode(event.data).error
            raise UpstreamEventError(
                error.message or f"the upstream reported `{error.type}` mid-stream",
                upstream_status=ERROR_STATUSES.get(error.type, 500),
                code=error.type,
            )
        return None  # ping, and event types added after this was written

    def _tool_chunk(self, call: ToolCallDelta) -> Chunk:
        return self._chunk(Delta(tool_calls=[call]))

    def _update_usage(self, update: _DeltaUsage) -> None:
        usage = self._usage
        if update.output_tokens is not None:
            usage.output_tokens = update.output_tokens
        if update.input_tokens is not None:
            usage.input_tokens = update.input_tokens
        if update.cache_creation_input_tokens is not None:
            usage.cache_creation_input_tokens = update.cache_creation_input_tokens
        if update.cache_read_input_tokens is not None:
            usage.cache_read_input_tokens = update.cache_read_input_tokens

    def _usage_chunk(self) -> Chunk | None:
        if self._finish is None:
            raise UpstreamEventError("the upstream's stream ended without a stop reason")
        if self._usage_sent:
            return None
        self._usage_sent = True
        return Chunk(self._id, self._created, self._model, [], _usage(self._usage))

    def finish(self) -> Chunk | None:
        chunk = self._usage_chunk()
        return chunk if self._raw is None else self._raw.flush(chunk)


def _args(text: str) -> FunctionCallDelta:
    return FunctionCallDelta(arguments=text)


def _named(event: ServerSentEvent, name: str) -> ServerSentEvent:
    return ServerSentEvent(event.data, name, event.id, event.retry)
