"""The Gemini API (`POST /v1beta/models/{model}:generateContent`), wire-exact.

`:streamGenerateContent?alt=sse` streams one `data:` event per piece, each a whole
`GenerateContentResponse`; the last one carries `finishReason` and `usageMetadata`. The key
comes in `x-goog-api-key`. A prompt containing `SAFETY_BLOCK_TRIGGER` is blocked as Gemini
blocks one (`promptFeedback.blockReason` and no candidate); one containing
`SAFETY_STOP_TRIGGER` is answered in part and stopped with `finishReason: SAFETY`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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

__all__ = ["SAFETY_BLOCK_TRIGGER", "SAFETY_STOP_TRIGGER", "GeminiGenerate", "gemini_error"]

SAFETY_BLOCK_TRIGGER = "BLOCK_ME"
SAFETY_STOP_TRIGGER = "STOP_ME"
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
           404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE",
           504: "DEADLINE_EXCEEDED"}  # fmt: skip
_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool": "STOP"}


def gemini_error(status: int, message: str) -> bytes:
    """An error body in Google's shape."""
    kind = _STATUS.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")
    return encoder.encode({"error": {"code": status, "message": message, "status": kind}})


class _Part(msgspec.Struct):
    text: str | None = None


class _Content(msgspec.Struct):
    parts: list[_Part] = msgspec.field(default_factory=list)
    role: str | None = None


class _Declaration(msgspec.Struct):
    name: str
    parameters: dict[str, Any] | None = None


class _Tool(msgspec.Struct):
    functionDeclarations: list[_Declaration] = msgspec.field(default_factory=list)


class _Generation(msgspec.Struct):
    maxOutputTokens: int | None = None


class _Request(msgspec.Struct):
    contents: list[_Content]
    systemInstruction: _Content | None = None
    tools: list[_Tool] | None = None
    generationConfig: _Generation | None = None


_decoder = msgspec.json.Decoder(_Request)


def _chars(contents: list[_Content]) -> int:
    return sum(len(part.text or "") for content in contents for part in content.parts)


@dataclass(frozen=True)
class GeminiGenerate:
    """`generateContent` (or its streaming form) of one model."""

    model: str
    stream: bool

    def check_key(self, headers: Mapping[str, str], key: str) -> BadRequest | None:
        if headers.get("x-goog-api-key") == key:
            return None
        message = "API key not valid. Please pass a valid API key."
        return BadRequest(400, gemini_error(400, message))

    def error(self, status: int, message: str) -> bytes:
        return gemini_error(status, message)

    def decode(self, body: bytes, config: FakeConfig) -> Call:
        request = decode_body(_decoder, body, self)
        if not request.contents:
            raise BadRequest(400, gemini_error(400, "* contents: must not be empty"))
        tool = None
        declarations = [d for t in request.tools or () for d in t.functionDeclarations]
        if config.tool_calls and declarations:
            arguments = encoder.encode(tool_arguments(declarations[0].parameters)).decode()
            tool = ToolUse(declarations[0].name, arguments)
        text = body.decode("utf-8", "replace")
        model = self.model
        if SAFETY_BLOCK_TRIGGER in text:
            model += "#block"
        elif SAFETY_STOP_TRIGGER in text:
            model += "#stop"
        system = [request.systemInstruction] if request.systemInstruction else []
        limit = request.generationConfig.maxOutputTokens if request.generationConfig else None
        return Call(
            model=model,
            stream=self.stream,
            prompt_tokens=tokens(_chars(request.contents) + _chars(system)),
            limit=limit,
            tool=tool,
        )

    def render(self, call: Call, config: FakeConfig) -> Reply:
        model, _, trigger = call.model.partition("#")
        result = answer(call, config)
        usage = {
            "promptTokenCount": call.prompt_tokens,
            "candidatesTokenCount": result.completion_tokens,
            "totalTokenCount": call.prompt_tokens + result.completion_tokens,
        }
        base = {"modelVersion": model, "responseId": "fake-gemini"}
        if trigger == "block":
            blocked = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": usage, **base}
            if not call.stream:
                return whole_reply(encoder.encode(blocked))
            return stream_reply([_event(blocked)], [], [], config=config, malformed=b"", error=b"")
        finish = "SAFETY" if trigger == "stop" else _FINISH[result.reason]

        def candidate(parts: list[dict[str, Any]], reason: str | None) -> dict[str, Any]:
            data: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
            if reason is not None:
                data["finishReason"] = reason
            return data

        def parts(text: str) -> list[dict[str, Any]]:
            if call.tool is not None:
                return [
                    {"functionCall": {"name": call.tool.name, "args": msgspec.json.decode(text)}}
                ]
            return [{"text": text}]

        if not call.stream:
            whole = {"candidates": [candidate(parts(result.text), finish)], "usageMetadata": usage}
            return whole_reply(encoder.encode({**whole, **base}))
        pieces = [result.text] if call.tool is not None else result.pieces
        if trigger == "stop":
            pieces = pieces[:1]
        events = []
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            data: dict[str, Any] = {
                "candidates": [candidate(parts(piece), finish if last else None)]
            }
            if last and not config.no_finish:
                data["usageMetadata"] = usage
            elif last:
                data["candidates"] = [candidate(parts(piece), None)]
            events.append(_event({**data, **base}))
        error = _event({"error": {"code": 500, "message": "Internal error", "status": "INTERNAL"}})
        return stream_reply(
            [], events, [], config=config, malformed=b'data: {"candidates": [\n\n', error=error
        )


def _event(data: object) -> bytes:
    return b"data: " + encoder.encode(data) + b"\r\n\r\n"
