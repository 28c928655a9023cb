"""The Gemini API's native `generateContent`, translated to and from the OpenAI shape.

Requests: system and developer messages become `systemInstruction`; user turns are
`user` contents and assistant turns `model` contents (text parts, and `functionCall`
parts for tool calls); a tool message becomes a `functionResponse` part in a user turn,
named after the call it answers; data-URL images become `inlineData`, other image URLs
`fileData`. Tools become `functionDeclarations`, `tool_choice` the function-calling
mode, and sampling settings `generationConfig` (`max_tokens` is `maxOutputTokens`, `n`
is `candidateCount`, a JSON `response_format` the response MIME type and schema).

Answers: each candidate is a choice; text parts are content, `functionCall` parts tool
calls (with ids made up here: Gemini has none). `STOP` finishes as `stop` (or
`tool_calls` when the candidate called a function), `MAX_TOKENS` as `length`, and the
safety stops (`SAFETY`, `RECITATION`, `BLOCKLIST`, `PROHIBITED_CONTENT`, `SPII`, ...) as
`content_filter`; a prompt blocked outright (`promptFeedback.blockReason`, no candidate)
is an empty answer finished `content_filter`. `usageMetadata` becomes usage (thinking
tokens count as completion tokens). Streams use `streamGenerateContent?alt=sse`: each
event is a whole response with the next pieces; the usage goes out in a last chunk.
"""

from __future__ import annotations

import itertools
import re
import time
from typing import Any

import msgspec

from pipeline import (
    ChatCompletion,
    Chunk,
    ChunkChoice,
    Context,
    Delta,
    FunctionCall,
    FunctionCallDelta,
    ImagePart,
    Request,
    ResponseChoice,
    ResponseMessage,
    ResponseStream,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Usage,
)

from ._events import UpstreamEventError, decode_event
from ._http import HTTPProvider
from ._sse import ServerSentEvent

__all__ = ["GeminiProvider", "to_gemini_request"]

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "LANGUAGE": "content_filter",
}
"""Gemini finish reason -> OpenAI finish reason (anything else: `stop`)."""

_DATA_URL = re.compile(r"data:(?P<type>[^;,]+);base64,(?P<data>.*)", re.S)
_encoder = msgspec.json.Encoder()
_ids = itertools.count()


class _FunctionCall(msgspec.Struct):
    name: str
    args: dict[str, Any] = msgspec.field(default_factory=dict)


class _Part(msgspec.Struct):
    text: str | None = None
    functionCall: _FunctionCall | None = None
    thought: bool | None = None


class _Content(msgspec.Struct):
    parts: list[_Part] = msgspec.field(default_factory=list)
    role: str | None = None


class _Candidate(msgspec.Struct):
    content: _Content | None = None
    finishReason: str | None = None
    index: int = 0


class _UsageMetadata(msgspec.Struct):
    promptTokenCount: int = 0
    candidatesTokenCount: int = 0
    thoughtsTokenCount: int = 0
    totalTokenCount: int = 0
    cachedContentTokenCount: int = 0


class _PromptFeedback(msgspec.Struct):
    blockReason: str | None = None


class _Response(msgspec.Struct):
    candidates: list[_Candidate] = msgspec.field(default_factory=list)
    promptFeedback: _PromptFeedback | None = None
    usageMetadata: _UsageMetadata | None = None
    responseId: str | None = None
    modelVersion: str | None = None


_response_decoder = msgspec.json.Decoder(_Response)


def _parts(content: str | list[Any] | None) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            parts.append({"text": part.text})
        elif isinstance(part, ImagePart):
            url = part.image_url.url
            match = _DATA_URL.fullmatch(url)
            if match:
                parts.append({"inlineData": {"mimeType": match["type"], "data": match["data"]}})
            else:
                parts.append({"fileData": {"fileUri": url}})
    return parts


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return {"arguments": text}
    return value if isinstance(value, dict) else {"value": value}


def to_gemini_request(request: Request) -> dict[str, Any]:
    """The `generateContent` body for an OpenAI-shaped request (see the module's notes)."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if not parts:
            return
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    for message in request.messages:
        if message.role in ("system", "developer"):
            system.extend(_parts(message.content))
        elif message.role == "assistant":
            parts = _parts(message.content)
            for call in message.tool_calls or ():
                names[call.id] = call.function.name
                parts.append(
                    {
                        "functionCall": {
                            "name": call.function.name,
                            "args": _arguments(call.function.arguments),
                        }
                    }
                )
            add("model", parts)
        elif message.role == "tool":
            text = "".join(p["text"] for p in _parts(message.content) if "text" in p)
            name = names.get(message.tool_call_id or "", message.name or "tool")
            add("user", [{"functionResponse": {"name": name, "response": {"content": text}}}])
        else:
            add("user", _parts(message.content))
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    if request.tools:
        body["tools"] = [
            {
                "functionDeclarations": [
                    {
                        key: value
                        for key, value in (
                            ("name", tool.function.name),
                            ("description", tool.function.description),
                            ("parameters", tool.function.parameters),
                        )
                        if value is not None
                    }
                    for tool in request.tools
                ]
            }
        ]
    choice = request.tool_choice
    if choice is not None:
        config: dict[str, Any]
        if choice == "none":
            config = {"mode": "NONE"}
        elif choice == "required":
            config = {"mode": "ANY"}
        elif isinstance(choice, dict):
            wanted = (choice.get("function") or {}).get("name")
            config = {"mode": "ANY"}
            if wanted:
                config["allowedFunctionNames"] = [wanted]
        else:
            config = {"mode": "AUTO"}
        body["toolConfig"] = {"functionCallingConfig": config}
    generation: dict[str, Any] = {}
    for key, value in (
        ("temperature", request.temperature),
        ("topP", request.top_p),
        ("maxOutputTokens", request.output_limit),
        ("candidateCount", request.n),
        ("presencePenalty", request.presence_penalty),
        ("frequencyPenalty", request.frequency_penalty),
        ("seed", request.seed),
    ):
        if value is not None:
            generation[key] = value
    if request.stop:
        generation["stopSequences"] = (
            [request.stop] if isinstance(request.stop, str) else request.stop
        )
    response_format = request.response_format or {}
    if response_format.get("type") in ("json_object", "json_schema"):
        generation["responseMimeType"] = "application/json"
        schema = (response_format.get("json_schema") or {}).get("schema")
        if schema is not None:
            generation["responseJsonSchema"] = schema
    if generation:
        body["generationConfig"] = generation
    return body


def _usage(metadata: _UsageMetadata | None) -> Usage | None:
    if metadata is None:
        return None
    completion = metadata.candidatesTokenCount + metadata.thoughtsTokenCount
    total = metadata.totalTokenCount or metadata.promptTokenCount + completion
    details = (
        {"cached_tokens": metadata.cachedContentTokenCount}
        if metadata.cachedContentTokenCount
        else None
    )
    return Usage(metadata.promptTokenCount, completion, total, prompt_tokens_details=details)


def _finish(candidate: _Candidate, called: bool) -> str | None:
    reason = candidate.finishReason
    if reason is None or reason == "FINISH_REASON_UNSPECIFIED":
        return None
    finish = FINISH_REASONS.get(reason, "stop")
    return "tool_calls" if finish == "stop" and called else finish


def _answer_parts(candidate: _Candidate) -> tuple[str, list[_FunctionCall]]:
    text = ""
    calls = []
    for part in candidate.content.parts if candidate.content else ():
        if part.thought:
            continue
        if part.text:
            text += part.text
        if part.functionCall is not None:
            calls.append(part.functionCall)
    return text, calls


class GeminiProvider(HTTPProvider):
    """The Gemini API behind the OpenAI chat-completions shape.

    Sends `POST {base_url}/models/{model}:generateContent` (or
    `:streamGenerateContent?alt=sse`) with `x-goog-api-key`, translating as the module's
    docstring says. `validate()` lists the models (`GET {base_url}/models`).

    Args:
      base_url: the API root with its version (default: `.../v1beta`).
      **kwargs: as for `HTTPProvider`.
    """

    kind = "gemini"
    default_base_url = "https://generativelanguage.googleapis.com/v1beta"
    validate_path = "/models"

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-goog-api-key": api_key}

    async def execute(self, request: Request, ctx: Context) -> ResponseStream:
        body = _encoder.encode(to_gemini_request(request))
        model = request.model.removeprefix("models/")
        if request.stream:
            url = f"{self.base_url}/models/{model}:streamGenerateContent?alt=sse"
            call = await self.post(url, body, ctx, stream=True)
            return self.stream_events(call, _GeminiEvents(request.model))
        url = f"{self.base_url}/models/{model}:generateContent"
        response = await self.fetch(url, body, ctx, _response_decoder)
        return ResponseStream.from_response(_completion(response, request.model))


def _completion(response: _Response, model: str) -> ChatCompletion:
    choices = []
    for candidate in response.candidates:
        text, calls = _answer_parts(candidate)
        tool_calls = [
            ToolCall(
                id=f"call_{next(_ids)}",
                function=FunctionCall(call.name, _encoder.encode(call.args).decode()),
            )
            for call in calls
        ] or None
        choices.append(
            ResponseChoice(
                index=candidate.index,
                message=ResponseMessage(content=text or None, tool_calls=tool_calls),
                finish_reason=_finish(candidate, bool(calls)) or "stop",
            )
        )
    if not choices and response.promptFeedback is not None:
        choices.append(
            ResponseChoice(
                index=0, message=ResponseMessage(content=None), finish_reason="content_filter"
            )
        )
    return ChatCompletion(
        id=response.responseId or f"gemini-{next(_ids)}",
        created=int(time.time()),
        model=response.modelVersion or model,
        choices=choices,
        usage=_usage(response.usageMetadata),
    )


class _GeminiEvents:
    """Each event (a whole response with the next pieces) becomes one chunk."""

    __slots__ = ("_created", "_finished", "_id", "_model", "_tools", "_usage", "done")

    def __init__(self, model: str) -> None:
        self._model = model
        self._id = f"gemini-{next(_ids)}"
        self._created = int(time.time())
        self._usage: Usage | None = None
        self._finished = False
        # Tool calls so far, by candidate: each call is a tool-call index of its own.
        self._tools: dict[int, int] = {}
        self.done = False

    def feed(self, event: ServerSentEvent) -> Chunk | None:
        if event.event not in ("message", ""):
            return None
        response = decode_event(_response_decoder, event.data)
        if response.usageMetadata is not None:
            self._usage = _usage(response.usageMetadata)
        if response.modelVersion:
            self._model = response.modelVersion
        choices = []
        for candidate in response.candidates:
            text, calls = _answer_parts(candidate)
            deltas = []
            for call in calls:
                index = self._tools.get(candidate.index, 0)
                self._tools[candidate.index] = index + 1
                deltas.append(
                    ToolCallDelta(
                        index=index,
                        id=f"call_{next(_ids)}",
                        type="function",
                        function=FunctionCallDelta(call.name, _encoder.encode(call.args).decode()),
                    )
                )
            finish = _finish(candidate, candidate.index in self._tools)
            if finish is not None:
                self._finished = True
            choices.append(
                ChunkChoice(
                    candidate.index,
                    Delta(role="assistant", content=text or None, tool_calls=deltas or None),
                    finish,
                )
            )
        if not choices and response.promptFeedback and response.promptFeedback.blockReason:
            self._finished = True
            choices.append(ChunkChoice(0, Delta(role="assistant"), "content_filter"))
        if not choices:
            return None
        return Chunk(self._id, self._created, self._model, choices)

    def finish(self) -> Chunk | None:
        if not self._finished:
            raise UpstreamEventError("the upstream's stream ended without a finish reason")
        if self._usage is None:
            return None
        return Chunk(self._id, self._created, self._model, [], self._usage)
