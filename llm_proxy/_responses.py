"""OpenAI's Responses API as a door: `POST /v1/responses`.

The body is decoded into the pipeline's chat-shaped `Request`: `instructions` become a
system message, `input` (a string, or items: messages, `function_call`,
`function_call_output`) the messages, function `tools` chat tools, `max_output_tokens`
the output limit, `text.format` the `response_format`, `reasoning.effort` the
`reasoning_effort`. It is also kept as sent (`Request.native`): an OpenAI upstream that
serves the Responses API receives it unchanged and its events come back unchanged; any
other provider gets the chat translation, and its chunks are translated back into the
Responses events here (`response.created`, `response.output_item.added`,
`response.output_text.delta`, `response.function_call_arguments.delta`, the `.done`
events, `response.completed` with usage).

`previous_response_id`, `conversation`, `background` and `store: true` need state this
proxy does not keep: they are refused with a 400 naming the parameter. What chat has no
counterpart for (a built-in tool, an item type this module does not know) is recorded in
`Native.untranslated`, so that only a provider that would have to translate it refuses it.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

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
    ProxyError,
    Request,
    TextPart,
    Tool,
    ToolCall,
    Usage,
    ValidationError,
)
from pipeline._types import _fields_decoder, decoding_error

from ._dialect import Dialect, EventEncoder

__all__ = ["RESPONSES", "decode_responses_request"]

_encoder = msgspec.json.Encoder()
_any_decoder = msgspec.json.Decoder()


# -- requests -------------------------------------------------------------------------------


class _Part(msgspec.Struct):
    type: str
    text: str | None = None
    image_url: str | None = None
    detail: str | None = None
    file_data: str | None = None
    filename: str | None = None
    refusal: str | None = None


class _Item(msgspec.Struct):
    type: str | None = None
    role: str | None = None
    content: str | list[_Part] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[_Part] | None = None


class _Tool(msgspec.Struct):
    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class _Format(msgspec.Struct):
    type: str
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class _Text(msgspec.Struct):
    format: _Format | None = None


class _Reasoning(msgspec.Struct):
    effort: str | None = None


class _ResponsesBody(msgspec.Struct):
    model: str
    input: str | list[_Item]
    instructions: str | None = None
    tools: list[_Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_output_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    text: _Text | None = None
    stream: bool = False
    store: bool | None = None
    previous_response_id: str | None = None
    conversation: Any = None
    background: bool | None = None
    parallel_tool_calls: bool | None = None
    reasoning: _Reasoning | None = None
    user: str | None = None


_body_decoder = msgspec.json.Decoder(_ResponsesBody)
_KNOWN = frozenset(_ResponsesBody.__struct_fields__)


def _refuse_state(body: _ResponsesBody) -> None:
    stateful = (
        ("previous_response_id", body.previous_response_id is not None),
        ("conversation", body.conversation is not None),
        ("background", bool(body.background)),
        ("store", bool(body.store)),
    )
    for name, asked in stateful:
        if asked:
            raise ValidationError(
                f"`{name}` needs responses stored by the server, and this proxy stores none: "
                "send the whole conversation in `input` (and `store: false`).",
                param=name,
            )


class _Translation:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.untranslated: list[str] = []

    def parts(self, parts: list[_Part], path: str) -> list[ContentPart]:
        result: list[ContentPart] = []
        for j, part in enumerate(parts):
            if part.type in ("input_text", "output_text", "text") and part.text is not None:
                result.append(TextPart(part.text))
            elif part.type == "input_image" and part.image_url is not None:
                result.append(ImagePart(ImageURL(part.image_url, part.detail)))
            elif part.type == "input_file" and part.file_data is not None:
                file = {"file_data": part.file_data, "filename": part.filename or "file"}
                result.append(FilePart(file))
            elif part.type == "refusal":
                continue  # the model's own refusal in history: no chat counterpart needed
            else:
                self.untranslated.append(f"{path}[{j}]")
        return result

    def item(self, item: _Item, path: str) -> None:
        kind = item.type or "message"
        if kind == "message" and item.role in ("user", "system", "developer", "assistant"):
            content = item.content
            if content is None or isinstance(content, str):
                text: str | list[ContentPart] = content or ""
            else:
                text = self.parts(content, f"{path}.content")
                if item.role == "assistant":
                    text = "".join(p.text for p in text if isinstance(p, TextPart))
            self.messages.append(Message(role=item.role, content=text))  # type: ignore[arg-type]
        elif kind == "function_call":
            call = ToolCall(item.call_id or "", FunctionCall(item.name or "", item.arguments or ""))
            last = self.messages[-1] if self.messages else None
            if last is not None and last.role == "assistant" and not last.text:
                last.tool_calls = [*(last.tool_calls or ()), call]
            else:
                self.messages.append(Message(role="assistant", tool_calls=[call]))
        elif kind == "function_call_output":
            output = item.output
            result = output if isinstance(output, str) or output is None else None
            if result is None and isinstance(output, list):
                parts = self.parts(output, f"{path}.output")
                result = "".join(p.text for p in parts if isinstance(p, TextPart))
            self.messages.append(
                Message(role="tool", content=result or "", tool_call_id=item.call_id or "")
            )
        elif kind == "reasoning":
            return  # opaque to any other provider (see the mapping table)
        else:
            self.untranslated.append(path)


def _tool_choice(choice: str | dict[str, Any] | None, translation: _Translation) -> Any:
    if choice is None or isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    translation.untranslated.append("tool_choice")
    return None


def _response_format(text: _Text | None) -> dict[str, Any] | None:
    form = text.format if text is not None else None
    if form is None or form.type == "text":
        return None
    if form.type == "json_schema":
        schema: dict[str, Any] = {"name": form.name or "response", "schema": form.schema or {}}
        if form.strict is not None:
            schema["strict"] = form.strict
        if form.description is not None:
            schema["description"] = form.description
        return {"type": "json_schema", "json_schema": schema}
    return {"type": form.type}


def decode_responses_request(body: bytes) -> Request:
    """Decode a Responses API body into a `responses` call of the pipeline.

    Raises:
      ValidationError: the body is not a Responses request, or asks for state the proxy
        does not keep (`previous_response_id`, `store: true`, ...); `param` names it.
    """
    try:
        typed = _body_decoder.decode(body)
        fields = _fields_decoder.decode(body)
    except Exception as exc:
        raise decoding_error(exc, body) from None
    _refuse_state(typed)
    translation = _Translation()
    if typed.instructions:
        translation.messages.append(Message(role="system", content=typed.instructions))
    if isinstance(typed.input, str):
        translation.messages.append(Message(role="user", content=typed.input))
    else:
        for i, item in enumerate(typed.input):
            translation.item(item, f"input[{i}]")
    if not translation.messages:
        raise ValidationError("`input` must not be empty", param="input")
    tools = []
    for i, tool in enumerate(typed.tools or ()):
        if tool.type != "function" or tool.name is None:
            translation.untranslated.append(f"tools[{i}]")
            continue
        tools.append(Tool(FunctionDef(tool.name, tool.description, tool.parameters, tool.strict)))
    extra = {name: _any_decoder.decode(raw) for name, raw in fields.items() if name not in _KNOWN}
    return Request(
        model=typed.model,
        messages=translation.messages,
        max_completion_tokens=typed.max_output_tokens,
        temperature=typed.temperature,
        top_p=typed.top_p,
        tools=tools or None,
        tool_choice=_tool_choice(typed.tool_choice, translation),
        parallel_tool_calls=typed.parallel_tool_calls,
        response_format=_response_format(typed.text),
        reasoning_effort=typed.reasoning.effort if typed.reasoning else None,
        user=typed.user,
        stream=typed.stream,
        extra=extra,
        api="responses",
        native=Native(fields, tuple(translation.untranslated)),
    )


# -- answers --------------------------------------------------------------------------------


def _usage(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    cached = (usage.prompt_tokens_details or {}).get("cached_tokens") or 0
    reasoning = (usage.completion_tokens_details or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": usage.total_tokens or usage.prompt_tokens + usage.completion_tokens,
    }


def _echo(request: Request) -> dict[str, Any]:
    """The request's parameters as a Responses object repeats them."""
    fields = request.native.fields if request.native is not None else {}

    def given(name: str, default: Any) -> Any:
        raw = fields.get(name)
        return raw if raw is not None else default

    return {
        "instructions": given("instructions", None),
        "max_output_tokens": given("max_output_tokens", None),
        "metadata": given("metadata", {}),
        "parallel_tool_calls": given("parallel_tool_calls", True),
        "temperature": given("temperature", None),
        "text": given("text", {"format": {"type": "text"}}),
        "tool_choice": given("tool_choice", "auto"),
        "tools": given("tools", []),
        "top_p": given("top_p", None),
        "store": False,
        "truncation": "disabled",
    }


def _response_id(answer_id: str) -> str:
    return answer_id if answer_id.startswith("resp_") else f"resp_{answer_id}"


def _status(finish: str | None) -> tuple[str, dict[str, str] | None]:
    if finish == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def _response(
    request: Request,
    answer_id: str,
    created: float,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: Usage | None,
    incomplete: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "id": _response_id(answer_id),
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": incomplete,
        "model": model or request.model,
        "output": output,
        "usage": _usage(usage),
        **_echo(request),
    }


def _text_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [part] if status == "completed" else [],
    }


def _call_item(item_id: str, call: ToolCall, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.id,
        "name": call.function.name,
        "arguments": call.function.arguments,
        "status": status,
    }


def _whole(answer: ChatCompletion, request: Request) -> bytes:
    if answer.raw is not None:
        return answer.raw
    output: list[dict[str, Any]] = []
    finish = None
    for choice in answer.choices:
        if choice.index != 0:
            continue
        finish = choice.finish_reason
        message = choice.message
        if message.content:
            output.append(_text_item(f"msg_{answer.id}", message.content))
        for i, call in enumerate(message.tool_calls or ()):
            output.append(_call_item(f"fc_{answer.id}_{i}", call))
    status, incomplete = _status(finish)
    response = _response(
        request, answer.id, answer.created, answer.model, status, output, answer.usage, incomplete
    )
    return _encoder.encode(response)


class _Call:
    __slots__ = ("arguments", "id", "name", "output_index")

    def __init__(self, call_id: str, name: str, output_index: int) -> None:
        self.id = call_id
        self.name = name
        self.arguments: list[str] = []
        self.output_index = output_index


class _ResponseEvents:
    """Translates chat chunks into the Responses API's events.

    `response.created` and `response.in_progress` first; a message item for the text
    (`output_item.added`, `content_part.added`, `output_text.delta`...) and a function-call
    item per tool call (`output_item.added`, `function_call_arguments.delta`...); at the
    end each item's `.done` events and `response.completed` with the whole output and the
    usage. A stream whose chunks carry the Responses events themselves (`Chunk.raw`, from
    an upstream that serves the API) is written as it came.
    """

    __slots__ = (
        "_calls",
        "_created",
        "_finish",
        "_id",
        "_model",
        "_native",
        "_output",
        "_request",
        "_sequence",
        "_started",
        "_text",
        "_text_index",
        "_usage",
    )

    def __init__(self, request: Request) -> None:
        self._request = request
        self._native = False
        self._started = False
        self._sequence = 0
        self._id = ""
        self._model = request.model
        self._created = time.time()
        self._output = 0
        self._text: list[str] | None = None
        self._text_index = -1
        self._calls: dict[int, _Call] = {}
        self._finish: str | None = None
        self._usage: Usage | None = None

    def _event(self, kind: str, data: dict[str, Any], out: list[bytes]) -> None:
        data = {"type": kind, "sequence_number": self._sequence, **data}
        self._sequence += 1
        out.append(b"event: " + kind.encode() + b"\ndata: " + _encoder.encode(data) + b"\n\n")

    def _snapshot(self, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
        usage = self._usage if status != "in_progress" else None
        finish_status, incomplete = _status(self._finish)
        if status == "done":
            status = finish_status
        return _response(
            self._request, self._id, self._created, self._model, status, output, usage, incomplete
        )

    @property
    def _item_id(self) -> str:
        return f"msg_{self._id}"

    def event(self, chunk: Chunk) -> bytes:
        if chunk.raw is not None:
            self._native = True
            return chunk.raw
        if self._native:
            return b""
        out: list[bytes] = []
        if not self._started:
            self._started = True
            self._id = chunk.id
            self._model = chunk.model or self._model
            self._created = chunk.created
            created = {"response": self._snapshot("in_progress", [])}
            self._event("response.created", created, out)
            self._event("response.in_progress", created, out)
        if chunk.usage is not None:
            self._usage = chunk.usage
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            delta = choice.delta
            if delta.content:
                self._add_text(delta.content, out)
            for fragment in delta.tool_calls or ():
                call = self._calls.get(fragment.index)
                function = fragment.function
                if call is None:
                    name = function.name if function and function.name else ""
                    call_id = fragment.id or f"call_{self._id}_{fragment.index}"
                    call = self._calls[fragment.index] = _Call(call_id, name, self._output)
                    self._output += 1
                    item = _call_item(self._call_item_id(fragment.index), self._tool(call), "")
                    item["status"] = "in_progress"
                    added = {"output_index": call.output_index, "item": item}
                    self._event("response.output_item.added", added, out)
                if function is not None and function.arguments:
                    call.arguments.append(function.arguments)
                    delta_event = {
                        "item_id": self._call_item_id(fragment.index),
                        "output_index": call.output_index,
                        "delta": function.arguments,
                    }
                    self._event("response.function_call_arguments.delta", delta_event, out)
            if choice.finish_reason is not None:
                self._finish = choice.finish_reason
        return b"".join(out)

    def _call_item_id(self, index: int) -> str:
        return f"fc_{self._id}_{index}"

    @staticmethod
    def _tool(call: _Call) -> ToolCall:
        return ToolCall(call.id, FunctionCall(call.name, "".join(call.arguments)))

    def _add_text(self, text: str, out: list[bytes]) -> None:
        if self._text is None:
            self._text = []
            self._text_index = self._output
            self._output += 1
            item = _text_item(self._item_id, "", "in_progress")
            self._event(
                "response.output_item.added", {"output_index": self._text_index, "item": item}, out
            )
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            added = {
                "item_id": self._item_id,
                "output_index": self._text_index,
                "content_index": 0,
                "part": part,
            }
            self._event("response.content_part.added", added, out)
        self._text.append(text)
        delta = {
            "item_id": self._item_id,
            "output_index": self._text_index,
            "content_index": 0,
            "delta": text,
            "logprobs": [],
        }
        self._event("response.output_text.delta", delta, out)

    def done(self) -> bytes:
        if self._native:
            return b""
        out: list[bytes] = []
        if not self._started:
            self.event(Chunk("", int(self._created), self._model))
        items: dict[int, dict[str, Any]] = {}
        if self._text is not None:
            text = "".join(self._text)
            where = {"item_id": self._item_id, "output_index": self._text_index}
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            self._event(
                "response.output_text.done",
                {**where, "content_index": 0, "text": text, "logprobs": []},
                out,
            )
            self._event(
                "response.content_part.done", {**where, "content_index": 0, "part": part}, out
            )
            item = items[self._text_index] = _text_item(self._item_id, text)
            self._event(
                "response.output_item.done", {"output_index": self._text_index, "item": item}, out
            )
        for index, call in self._calls.items():
            tool = self._tool(call)
            item_id = self._call_item_id(index)
            arguments = {
                "item_id": item_id,
                "output_index": call.output_index,
                "name": call.name,
                "arguments": tool.function.arguments,
            }
            self._event("response.function_call_arguments.done", arguments, out)
            item = items[call.output_index] = _call_item(item_id, tool)
            self._event(
                "response.output_item.done", {"output_index": call.output_index, "item": item}, out
            )
        output = [items[i] for i in sorted(items)]
        response = self._snapshot("done", output)
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        self._event(kind, {"response": response}, out)
        return b"".join(out)


def _events(request: Request) -> EventEncoder:
    return _ResponseEvents(request)


def _error_json(error: ProxyError) -> bytes:
    return error.to_json()


def _error_event(error: ProxyError) -> bytes:
    data = {
        "type": "error",
        "code": error.code or error.type,
        "message": error.message,
        "param": error.param,
        "sequence_number": 0,
    }
    return b"event: error\ndata: " + _encoder.encode(data) + b"\n\n"


RESPONSES = Dialect(
    name="responses",
    decode=decode_responses_request,
    events=_events,
    whole=_whole,
    error=_error_json,
    error_event=_error_event,
)
"""`POST /v1/responses`: OpenAI's Responses API."""
