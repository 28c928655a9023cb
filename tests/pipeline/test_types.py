"""Request decoding and validation, the wire encoding of requests, and chunk decoding."""

from __future__ import annotations

import re

import msgspec
import pytest

from pipeline import (
    Chunk,
    ChunkChoice,
    Delta,
    ImagePart,
    Request,
    TextPart,
    ValidationError,
    decode_request,
    encode_request,
)


def body(**fields: object) -> bytes:
    base: dict[str, object] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    base.update(fields)
    return msgspec.json.encode(base)


def test_decodes_every_openai_field() -> None:
    request = decode_request(
        body(
            temperature=0.5,
            top_p=0.9,
            max_tokens=100,
            stop=["\n"],
            n=2,
            seed=7,
            tools=[
                {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
            ],
            tool_choice="auto",
            response_format={"type": "json_object"},
            stream=True,
            stream_options={"include_usage": True},
            user="u-1",
        )
    )
    assert request.temperature == 0.5
    assert request.max_tokens == 100
    assert request.stop == ["\n"]
    assert request.tools is not None
    assert request.tools[0].function.name == "f"
    assert request.wants_usage
    assert request.stream
    assert request.extra == {}


def test_content_parts_are_typed() -> None:
    request = decode_request(
        body(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is "},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                        {"type": "text", "text": "this?"},
                    ],
                }
            ]
        )
    )
    parts = request.messages[0].content
    assert isinstance(parts, list)
    assert isinstance(parts[0], TextPart)
    assert isinstance(parts[1], ImagePart)
    assert request.messages[0].text == "what is this?"


def test_unknown_fields_are_kept_and_forwarded() -> None:
    request = decode_request(body(top_k=40, reasoning_effort="low", metadata={"a": [1, 2]}))
    assert request.extra == {"top_k": 40, "reasoning_effort": "low", "metadata": {"a": [1, 2]}}
    wire = msgspec.json.decode(encode_request(request))
    assert wire["top_k"] == 40
    assert wire["metadata"] == {"a": [1, 2]}
    assert "__extra__" not in wire


def test_encode_request_overrides_and_drops_fields() -> None:
    request = decode_request(body(stream=True, user="u"))
    wire = msgspec.json.decode(encode_request(request, model="upstream-model", user=None))
    assert wire["model"] == "upstream-model"
    assert "user" not in wire
    assert wire["stream"] is True


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        (
            {"messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
            "Invalid enum value 'wizard'",
        ),
        (
            {"messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
            "Expected `str | array | null`, got `int`",
        ),
        ({"messages": [{"content": "x"}]}, "messages[0].role", "missing required field `role`"),
        ({"temperature": "hot"}, "temperature", "Expected `float | null`, got `str`"),
        ({"temperature": 3}, "temperature", "Expected `float` <= 2.0"),
        ({"max_tokens": 0}, "max_tokens", "Expected `int` >= 1"),
        ({"messages": []}, "messages", "Expected `array` of length >= 1"),
        (
            {"tools": [{"type": "function", "function": {"description": "no name"}}]},
            "tools[0].function.name",
            "missing required field `name`",
        ),
        ({"stream": "yes"}, "stream", "Expected `bool`, got `str`"),
    ],
)
def test_invalid_fields_name_their_path(
    fields: dict[str, object], param: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)) as info:
        decode_request(body(**fields))
    assert info.value.param == param
    assert info.value.status == 400
    assert "`$" not in info.value.message


def test_missing_top_level_field_is_named() -> None:
    with pytest.raises(ValidationError, match="model") as info:
        decode_request(b'{"messages": [{"role": "user", "content": "hi"}]}')
    assert info.value.param == "model"


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b'{"model": "x",}'])
def test_malformed_json_is_a_validation_error(raw: bytes) -> None:
    with pytest.raises(ValidationError, match="not valid JSON"):
        decode_request(raw)


@pytest.mark.parametrize(
    ("content", "named"),
    [(rb"\ud800", r"\ud800"), (rb"a\uDBFFb", r"\udbff"), (rb"\ud800\u0041", r"\ud800")],
)
def test_a_lone_surrogate_is_named_not_called_truncated(content: bytes, named: str) -> None:
    body = b'{"model": "m", "messages": [{"role": "user", "content": "' + content + b'"}]}'
    with pytest.raises(ValidationError) as info:
        decode_request(body)
    assert f"lone surrogate {named} in a string" in info.value.message
    assert "truncated" not in info.value.message


def test_a_surrogate_pair_and_an_escaped_backslash_decode() -> None:
    pair = decode_request(
        rb'{"model": "m", "messages": [{"role": "user", "content": "\ud83d\ude00 \\ud800"}]}'
    )
    assert pair.messages[0].content == "\U0001f600 \\ud800"


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "x": ' + DEEP + b"}",
            "nested too deeply",
        ),
        (b'{"model": "m", "messages": [{"role": "user", "content": ' + DEEP + b"}]}", "Expected"),
        (DEEP, "Expected `object`"),
    ],
    ids=["in an extra field", "in a known field", "the body"],
)
def test_a_body_nested_too_deeply_is_a_validation_error(raw: bytes, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as raised:
        decode_request(raw)
    assert raised.value.status == 400


def test_a_request_built_in_code_encodes_like_the_wire() -> None:
    request = Request(model="m", messages=decode_request(body()).messages, max_tokens=5)
    assert msgspec.json.decode(encode_request(request)) == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
    }


def test_a_chunk_choice_without_a_delta_has_an_empty_one() -> None:
    # Azure's content-filter chunks carry no delta.
    data = (
        b'{"id":"c","created":1,"model":"m","object":"chat.completion.chunk","choices":'
        b'[{"index":0,"finish_reason":null,"content_filter_results":{}}]}'
    )
    chunk = msgspec.json.decode(data, type=Chunk)
    assert chunk.choices[0].delta == Delta()
    assert ChunkChoice(0).delta == Delta()
    assert b'"delta":{}' in msgspec.json.encode(chunk)
