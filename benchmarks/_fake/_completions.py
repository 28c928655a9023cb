"""The legacy completions API of the custom-provider guide (`POST /v1/completions`).

The request is `{prompt, max_tokens, temperature, stream}`. A whole answer is `{text,
finish_reason, usage: {prompt_tokens, completion_tokens}}`; a stream is `data:` events of
`{text, finish_reason}`, the finish reason null until the last, then `data: [DONE]`.
Errors and keys are OpenAI's (`Authorization: Bearer`).
"""

from __future__ import annotations

import msgspec

from ._answer import Call, Reply, answer, decode_body, encoder, stream_reply, tokens, whole_reply
from ._config import FakeConfig
from ._openai import STREAM_ERROR_EVENT, OpenAIShaped, sse

__all__ = ["COMPLETIONS", "LegacyCompletions"]

_DONE = b"data: [DONE]\n\n"


class _CompletionRequest(msgspec.Struct):
    prompt: str
    max_tokens: int | None = None
    temperature: float | None = None
    stream: bool = False
    model: str = ""


_decoder = msgspec.json.Decoder(_CompletionRequest)


class LegacyCompletions(OpenAIShaped):
    """`POST /v1/completions` (tool calls are not part of this API)."""

    def decode(self, body: bytes, config: FakeConfig) -> Call:
        request = decode_body(_decoder, body, self)
        return Call(
            model=request.model,
            stream=request.stream,
            prompt_tokens=tokens(len(request.prompt)),
            limit=request.max_tokens,
        )

    def render(self, call: Call, config: FakeConfig) -> Reply:
        result = answer(call, config)
        finish = None if config.no_finish else result.reason
        if not call.stream:
            usage = {
                "prompt_tokens": call.prompt_tokens,
                "completion_tokens": result.completion_tokens,
            }
            body = encoder.encode({"text": result.text, "finish_reason": finish, "usage": usage})
            if config.malformed_after is not None:
                body = body[: len(body) // 2]
            return whole_reply(body)
        last = len(result.pieces) - 1
        deltas = [
            sse({"text": piece, "finish_reason": finish if i == last else None})
            for i, piece in enumerate(result.pieces)
        ]
        tail = [_DONE]
        if not deltas and finish is not None:
            tail.insert(0, sse({"text": "", "finish_reason": finish}))
        return stream_reply(
            (),
            deltas,
            tail,
            config=config,
            malformed=b'data: {"text": "\n\n',
            error=STREAM_ERROR_EVENT,
        )


COMPLETIONS = LegacyCompletions()
