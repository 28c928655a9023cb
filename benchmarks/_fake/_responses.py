"""OpenAI's Responses API (`POST /v1/responses`), wire-exact.

A stream is named events, each with its `sequence_number`: `response.created`,
`response.in_progress`, `response.output_item.added`, for text `response.content_part.added`,
one `response.output_text.delta` per piece, `response.output_text.done`,
`response.content_part.done`, for a tool call `response.function_call_arguments.delta` per
piece and `response.function_call_arguments.done`, then `response.output_item.done` and
`response.completed` with the usage. Every object also carries a field of the fake's own
(`fake_marker`), so tests can see that a proxy passes what it does not know through.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from ._answer import (
    Call,
    Reply,
    ToolUse,
    answer,
    decode_body,
    encoder,
    stream_reply,
    tokens,
    tool_arguments,
    whole_reply,
)
from ._config import FakeConfig
from ._openai import STREAM_ERROR_EVENT, OpenAIShaped

__all__ = ["RESPONSES", "OpenAIResponses"]

_ID = "resp_fake"
_ITEM = "msg_fake"
_CALL_ITEM = "fc_fake"
_CALL_ID = "call_fake_0"


class _Part(msgspec.Struct):
    text: str = ""


class _Item(msgspec.Struct):
    content: str | list[_Part] | None = None
    output: str | None = None
    arguments: str | None = None


class _Tool(msgspec.Struct):
    type: str
    name: str | None = None
    parameters: dict[str, Any] | None = None


class _ResponsesRequest(msgspec.Struct):
    model: str
    input: str | list[_Item]
    instructions: str | None = None
    stream: bool = False
    max_output_tokens: int | None = None
    tools: list[_Tool] | None = None


_decoder = msgspec.json.Decoder(_ResponsesRequest)


def _chars(request: _ResponsesRequest) -> int:
    total = len(request.instructions or "")
    if isinstance(request.input, str):
        return total + len(request.input)
    for item in request.input:
        if isinstance(item.content, str):
            total += len(item.content)
        elif item.content:
            total += sum(len(part.text) for part in item.content)
        total += len(item.output or "") + len(item.arguments or "")
    return total


def _event(data: dict[str, Any]) -> bytes:
    kind: str = data["type"]
    return b"event: " + kind.encode() + b"\ndata: " + encoder.encode(data) + b"\n\n"


class OpenAIResponses(OpenAIShaped):
    """`POST /v1/responses`."""

    def decode(self, body: bytes, config: FakeConfig) -> Call:
        request = decode_body(_decoder, body, self)
        tool = None
        functions = [t for t in request.tools or () if t.type == "function" and t.name]
        if config.tool_calls and functions:
            arguments = encoder.encode(tool_arguments(functions[0].parameters)).decode()
            tool = ToolUse(functions[0].name or "", arguments)
        return Call(
            model=request.model,
            stream=request.stream,
            prompt_tokens=tokens(_chars(request)),
            limit=request.max_output_tokens,
            tool=tool,
        )

    def render(self, call: Call, config: FakeConfig) -> Reply:
        result = answer(call, config)
        usage = {
            "input_tokens": call.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": result.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": call.prompt_tokens + result.completion_tokens,
        }
        if call.tool is None:
            part = {"type": "output_text", "text": result.text, "annotations": [], "logprobs": []}
            item: dict[str, Any] = {
                "type": "message",
                "id": _ITEM,
                "status": "completed",
                "role": "assistant",
                "content": [part],
            }
        else:
            item = {
                "type": "function_call",
                "id": _CALL_ITEM,
                "call_id": _CALL_ID,
                "name": call.tool.name,
                "arguments": result.text,
                "status": "completed",
            }
        status = "incomplete" if result.reason == "length" else "completed"
        response: dict[str, Any] = {
            "id": _ID,
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"}
            if status != "completed"
            else None,
            "model": call.model,
            "output": [item],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": usage,
            "fake_marker": "kept",
        }
        if not call.stream:
            return whole_reply(encoder.encode(response))
        sequence = iter(range(1_000_000))

        def event(kind: str, **data: Any) -> bytes:
            return _event({"type": kind, "sequence_number": next(sequence), **data})

        pending = {**response, "status": "in_progress", "output": [], "usage": None}
        head = [
            event("response.created", response=pending),
            event("response.in_progress", response=pending),
        ]
        if call.tool is None:
            empty = {**part, "text": ""}
            head.append(
                event(
                    "response.output_item.added",
                    output_index=0,
                    item={**item, "status": "in_progress", "content": []},
                )
            )
            head.append(
                event(
                    "response.content_part.added",
                    item_id=_ITEM,
                    output_index=0,
                    content_index=0,
                    part=empty,
                )
            )
            deltas = [
                event(
                    "response.output_text.delta",
                    item_id=_ITEM,
                    output_index=0,
                    content_index=0,
                    delta=piece,
                    logprobs=[],
                    fake_marker="kept",
                )
                for piece in result.pieces
            ]
            where = {"item_id": _ITEM, "output_index": 0, "content_index": 0}
            tail = [
                event("response.output_text.done", text=result.text, logprobs=[], **where),
                event("response.content_part.done", part=part, **where),
            ]
        else:
            added = {**item, "status": "in_progress", "arguments": ""}
            head.append(event("response.output_item.added", output_index=0, item=added))
            deltas = [
                event(
                    "response.function_call_arguments.delta",
                    item_id=_CALL_ITEM,
                    output_index=0,
                    delta=piece,
                )
                for piece in result.pieces
            ]
            tail = [
                event(
                    "response.function_call_arguments.done",
                    item_id=_CALL_ITEM,
                    output_index=0,
                    arguments=result.text,
                    name=call.tool.name,
                )
            ]
        tail.append(event("response.output_item.done", output_index=0, item=item))
        if not config.no_finish:
            kind = "response.completed" if status == "completed" else "response.incomplete"
            tail.append(event(kind, response=response))
        return stream_reply(
            head,
            deltas,
            tail,
            config=config,
            malformed=b'event: response.output_text.delta\ndata: {"type": "resp\n\n',
            error=STREAM_ERROR_EVENT,
        )


RESPONSES = OpenAIResponses()
