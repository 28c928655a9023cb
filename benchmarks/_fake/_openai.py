"""OpenAI chat completions (`POST /v1/chat/completions`) and the model list, wire-exact.

A stream is a role chunk, one chunk per content (or tool-argument) delta, a chunk with the
finish reason, a usage chunk with no choices when `stream_options.include_usage` asks for
it, and `data: [DONE]`. With `include_usage` every other chunk carries `"usage": null`,
as OpenAI's does.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
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

__all__ = [
    "OPENAI",
    "OpenAIChat",
    "OpenAIShaped",
    "STREAM_ERROR_EVENT",
    "models_reply",
    "openai_error",
    "sse",
]

_DONE = b"data: [DONE]\n\n"
_FINGERPRINT = "fp_fake"
_CALL_ID = "call_fake_0"
_FINISH = {"stop": "stop", "length": "length", "tool": "tool_calls"}


def sse(data: object) -> bytes:
    """One `data:` event of a JSON value."""
    return b"data: " + encoder.encode(data) + b"\n\n"


# OpenAI reports a failure after the stream has started as an error object in a `data:` event.
STREAM_ERROR_EVENT = sse(
    {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
)


def openai_error(status: int, message: str, *, code: str | None = None) -> bytes:
    """An error body in OpenAI's shape, its `type` and `code` chosen by status."""
    if status == 429:
        kind, code = "requests", code or "rate_limit_exceeded"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    return encoder.encode(
        {"error": {"message": message, "type": kind, "param": None, "code": code}}
    )


def models_reply(config: FakeConfig) -> Reply:
    """The `GET /v1/models` list."""
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in config.models]
    return whole_reply(encoder.encode({"object": "list", "data": data}))


class _Part(msgspec.Struct):
    text: str = ""


class _Message(msgspec.Struct):
    content: str | list[_Part] | None = None


class _Function(msgspec.Struct):
    name: str
    parameters: dict[str, Any] | None = None


class _Tool(msgspec.Struct):
    function: _Function


class _StreamOptions(msgspec.Struct):
    include_usage: bool = False


class _ChatRequest(msgspec.Struct):
    model: str
    messages: list[_Message]
    stream: bool = False
    stream_options: _StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    tools: list[_Tool] | None = None


_decoder = msgspec.json.Decoder(_ChatRequest)


def _message_chars(messages: Sequence[_Message]) -> int:
    """Characters of text in chat messages (string contents and text parts)."""
    total = 0
    for message in messages:
        content = message.content
        if isinstance(content, str):
            total += len(content)
        elif content:
            total += sum(len(part.text) for part in content)
    return total


class OpenAIShaped:
    """Keys and errors the OpenAI way: `Authorization: Bearer` and `{"error": {...}}`."""

    def check_key(self, headers: Mapping[str, str], key: str) -> BadRequest | None:
        # Say what is wrong, never which key was expected or sent.
        authorization = headers.get("authorization")
        if authorization is None:
            message = "You didn't provide an API key."
            return BadRequest(401, openai_error(401, message))
        if authorization != f"Bearer {key}":
            message = "Incorrect API key provided."
            return BadRequest(401, openai_error(401, message, code="invalid_api_key"))
        return None

    def error(self, status: int, message: str) -> bytes:
        return openai_error(status, message)


class OpenAIChat(OpenAIShaped):
    """`POST /v1/chat/completions`."""

    def decode(self, body: bytes, config: FakeConfig) -> Call:
        request = decode_body(_decoder, body, self)
        tool = None
        if config.tool_calls and request.tools:
            function = request.tools[0].function
            arguments = encoder.encode(tool_arguments(function.parameters)).decode()
            tool = ToolUse(function.name, arguments)
        return Call(
            model=request.model,
            stream=request.stream,
            prompt_tokens=tokens(_message_chars(request.messages)),
            limit=request.max_completion_tokens or request.max_tokens,
            include_usage=bool(request.stream_options and request.stream_options.include_usage),
            tool=tool,
        )

    def render(self, call: Call, config: FakeConfig) -> Reply:
        result = answer(call, config)
        finish = None if config.no_finish else _FINISH[result.reason]
        usage = {
            "prompt_tokens": call.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": call.prompt_tokens + result.completion_tokens,
        }
        base: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk" if call.stream else "chat.completion",
            "created": int(time.time()),
            "model": call.model,
            "system_fingerprint": _FINGERPRINT,
        }
        if not call.stream:
            message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
            if call.tool is None:
                message["content"] = result.text
            else:
                function = {"name": call.tool.name, "arguments": result.text}
                message["tool_calls"] = [{"id": _CALL_ID, "type": "function", "function": function}]
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            body = encoder.encode({**base, "choices": [choice], "usage": usage})
            if config.malformed_after is not None:
                body = body[: len(body) // 2]
            return whole_reply(body)

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            data = {**base, "choices": [choice]}
            if call.include_usage:
                data["usage"] = None
            return sse(data)

        role: dict[str, Any]
        if call.tool is None:
            role = {"role": "assistant", "content": "", "refusal": None}
            deltas = [chunk({"content": piece}) for piece in result.pieces]
        else:
            start = {"name": call.tool.name, "arguments": ""}
            first = {"index": 0, "id": _CALL_ID, "type": "function", "function": start}
            role = {"role": "assistant", "content": None, "tool_calls": [first], "refusal": None}
            deltas = [
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                for piece in result.pieces
            ]
        tail = [_DONE]
        if finish is not None:
            ending = [chunk({}, finish)]
            if call.include_usage:
                ending.append(sse({**base, "choices": [], "usage": usage}))
            tail[:0] = ending
        return stream_reply(
            [chunk(role)],
            deltas,
            tail,
            config=config,
            malformed=b'data: {"id": "chatcmpl-fake", "choices": [{"delta": {"content": \n\n',
            error=STREAM_ERROR_EVENT,
        )


OPENAI = OpenAIChat()
