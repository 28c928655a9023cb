"""OpenAI embeddings (`POST /v1/embeddings`), wire-exact.

Each input gets a deterministic unit vector of `dimensions` numbers (8 unless asked),
made from its position; `encoding_format: "base64"` answers each vector as the base64 of
its little-endian float32 bytes, as OpenAI does.
"""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import msgspec

from ._answer import BadRequest, Call, Reply, decode_body, encoder, tokens, whole_reply
from ._config import FakeConfig
from ._openai import OpenAIShaped

__all__ = ["EMBEDDINGS", "OpenAIEmbeddings", "fake_vector"]

DIMENSIONS = 8


class _EmbeddingsRequest(msgspec.Struct):
    model: str
    input: str | list[Any]
    encoding_format: str = "float"
    dimensions: int | None = None


_decoder = msgspec.json.Decoder(_EmbeddingsRequest)


def fake_vector(index: int, dimensions: int) -> list[float]:
    """The fake's unit vector for the input at `index`."""
    raw = [math.sin(index + 1 + d) for d in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def _chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, int):
        return 4
    if isinstance(value, list):
        return sum(_chars(item) for item in value)
    return 0


class OpenAIEmbeddings(OpenAIShaped):
    """`POST /v1/embeddings`."""

    def decode(self, body: bytes, config: FakeConfig) -> Call:
        request = decode_body(_decoder, body, self)
        value = request.input
        count = (
            1 if isinstance(value, str) or all(isinstance(v, int) for v in value) else len(value)
        )
        if request.encoding_format not in ("float", "base64"):
            raise BadRequest(400, self.error(400, "encoding_format must be float or base64"))
        shape = (count, request.dimensions or DIMENSIONS, request.encoding_format)
        return Call(request.model, False, tokens(_chars(value)), shape=shape)

    def render(self, call: Call, config: FakeConfig) -> Reply:
        count, dimensions, encoding = call.shape
        data = []
        for index in range(count):
            vector = fake_vector(index, dimensions)
            embedding: Any = vector
            if encoding == "base64":
                packed = struct.pack(f"<{dimensions}f", *vector)
                embedding = base64.b64encode(packed).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        usage = {"prompt_tokens": call.prompt_tokens, "total_tokens": call.prompt_tokens}
        body = {"object": "list", "data": data, "model": call.model, "usage": usage}
        return whole_reply(encoder.encode(body))


EMBEDDINGS = OpenAIEmbeddings()
