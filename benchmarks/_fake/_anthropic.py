"""Anthropic Messages (`POST /v1/messages`), wire-exact.

A stream is named events: `message_start` (with the input tokens), `content_block_start`,
one `ping`, one `content_block_delta` per piece (`text_delta`, or `input_json_delta` for a
tool call), `content_block_stop`, `message_delta` (stop reason and output tokens) and
`message_stop`. Errors, whole or in the stream, are `{"type": "error", "error": {...}}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from ._answer import (
    BadRequest,
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

__all__ = ["ANTHROPIC", "ANTHROPIC_COUNT", "AnthropicCount", "AnthropicMessages", "anthropic_error"]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool": "tool_use"}
_TOOL_ID = "toolu_fake_0"


def anthropic_error(status: int, message: str) -> bytes:
    """An error body in Anthropic's shape, its `type` chosen by status."""
    default = "api_error" if status >= 500 else "invalid_request_error"
    kind = _ERROR_TYPES.get(status, default)
    return encoder.encode({"type": "error", "error": {"type": kind, "message": message}})


def event(name: bytes, data: object) -> bytes:
    """One named server-sent event with a JSON payload."""
    return b"event: " + name + b"\ndata: " + encoder.encode(data) + b"\n\n"


class _Block(msgspec.Struct):
    text: str = ""


class _Message(msgspec.Struct):
    content: str | list[_Block]


class _Tool(msgspec.Struct):
    name: str
    input_schema: dict[str, Any] | None = None


class _MessagesRequest(msgspec.Struct):
    model: str
    messages: list[_Message]
    max_tokens: int
    system: str | list[_Block] | None = None
    stream: bool = False
    tools: list[_Tool] | None = None


_decoder = msgspec.json.Decoder(_MessagesRequest)


def _chars(content: str | list[_Block] | None) -> int:
    if isinstance(content, str):
        return len(content)
    return sum(len(block.text) for block in content or ())


class AnthropicMessages:
    """`POST /v1/messages`."""

    def check_key(self, headers: Mapping[str, str], key: str) -> BadRequest | None:
        # Anthropic documents `x-api-key`; its newer SDKs send `Authorization: Bearer`.
        if headers.get("x-api-key") != key and headers.get("authorization") != f"Bearer {key}":
            return BadRequest(401, anthropic_error(401, "invalid x-api-key"))
        if "anthropic-version" not in headers:
            return BadRequest(400, anthropic_error(400, "anthropic-version: header is required"))
        return None

    def error(self, status: int, message: str) -> bytes:
        return anthropic_error(status, message)

    def decode(self, body: bytes, config: FakeConfig) -> Call:
        request = decode_body(_decoder, body, self)
        tool = None
        if config.tool_calls and request.tools:
            first = request.tools[0]
            arguments = encoder.encode(tool_arguments(first.input_schema)).decode()
            tool = ToolUse(first.name, arguments)
        chars = _chars(request.system) + sum(_chars(m.content) for m in request.messages)
        return Call(
            model=request.model,
            stream=request.stream,
            prompt_tokens=tokens(chars),
            limit=request.max_tokens,
            tool=tool,
        )

    def render(self, call: Call, config: FakeConfig) -> Reply:
        result = answer(call, config)
        stop_reason = None if config.no_finish else _STOP_REASONS[result.reason]
        message: dict[str, Any] = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": call.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
        }
        if not call.stream:
            if call.tool is None:
                block: dict[str, Any] = {"type": "text", "text": result.text}
            else:
                arguments = msgspec.Raw(result.text.encode())
                block = {"type": "tool_use", "id": _TOOL_ID, "name": call.tool.name}
                block["input"] = arguments
            message["content"] = [block]
            message["stop_reason"] = stop_reason
            message["usage"] = {
                "input_tokens": call.prompt_tokens,
                "output_tokens": result.completion_tokens,
            }
            body = encoder.encode(message)
            if config.malformed_after is not None:
                body = body[: len(body) // 2]
            return whole_reply(body)

        message["usage"] = {"input_tokens": call.prompt_tokens, "output_tokens": 1}
        if call.tool is None:
            block = {"type": "text", "text": ""}
            kind, field = "text_delta", "text"
        else:
            block = {"type": "tool_use", "id": _TOOL_ID, "name": call.tool.name, "input": {}}
            kind, field = "input_json_delta", "partial_json"
        head = [
            event(b"message_start", {"type": "message_start", "message": message}),
            event(
                b"content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": block},
            ),
            event(b"ping", {"type": "ping"}),
        ]
        deltas = [
            event(
                b"content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": kind, field: piece}},
            )
            for piece in result.pieces
        ]
        tail = [event(b"content_block_stop", {"type": "content_block_stop", "index": 0})]
        if stop_reason is not None:
            delta = {"stop_reason": stop_reason, "stop_sequence": None}
            usage = {"output_tokens": result.completion_tokens}
            tail.append(
                event(b"message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
            )
            tail.append(event(b"message_stop", {"type": "message_stop"}))
        return stream_reply(
            head,
            deltas,
            tail,
            config=config,
            malformed=b'event: content_block_delta\ndata: {"type": "content_block_delta", "ind\n\n',
            error=event(
                b"error",
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            ),
        )


ANTHROPIC = AnthropicMessages()


class _CountRequest(msgspec.Struct, forbid_unknown_fields=True):
    """What the token count takes (it refuses `max_tokens`, `stream`, ...)."""

    model: str
    messages: list[_Message]
    system: str | list[_Block] | None = None
    tools: list[_Tool] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None


_count_decoder = msgspec.json.Decoder(_CountRequest)


class AnthropicCount(AnthropicMessages):
    """`POST /v1/messages/count_tokens`: `{"input_tokens": N}` (the fake's count)."""

    def decode(self, body: bytes, config: FakeConfig) -> Call:
        request = decode_body(_count_decoder, body, self)
        chars = _chars(request.system) + sum(_chars(m.content) for m in request.messages)
        return Call(model=request.model, stream=False, prompt_tokens=tokens(chars))

    def render(self, call: Call, config: FakeConfig) -> Reply:
        return whole_reply(encoder.encode({"input_tokens": call.prompt_tokens}))


ANTHROPIC_COUNT = AnthropicCount()
