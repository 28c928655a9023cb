"""The legacy completions request becomes the chat request it stands for."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm_proxy._openai import decode_completion_request
from pipeline import Message, ValidationError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=5,
)


@given(
    prompt=st.text(),
    as_list=st.booleans(),
    max_tokens=st.none() | st.integers(1, 10**6),
    temperature=st.none() | st.floats(0, 2),
    stream=st.booleans(),
    stop=st.none() | st.text() | st.lists(st.text(), max_size=4),
    extra=st.dictionaries(st.sampled_from(["user_tag", "x_custom"]), json_values),
)
def test_legacy_fields_map_onto_the_chat_request(
    prompt: str,
    as_list: bool,
    max_tokens: int | None,
    temperature: float | None,
    stream: bool,
    stop: str | list[str] | None,
    extra: dict[str, Any],
) -> None:
    body: dict[str, Any] = {
        "model": "m",
        "prompt": [prompt] if as_list else prompt,
        "stream": stream,
        **extra,
    }
    for name, value in (("max_tokens", max_tokens), ("temperature", temperature), ("stop", stop)):
        if value is not None:
            body[name] = value

    request = decode_completion_request(msgspec.json.encode(body))

    assert request.model == "m"
    assert request.messages == [Message(role="user", content=prompt)]
    assert (request.max_tokens, request.temperature, request.stop) == (
        max_tokens,
        temperature,
        stop,
    )
    assert request.stream is stream
    assert request.extra == extra


DEEP = b"[" * 10**5 + b"]" * 10**5


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        (b"{", None, "not valid JSON"),
        (b"[]", None, "must be a JSON object"),
        (b'{"model": "m"}', "prompt", "missing required field `prompt`"),
        (b'{"model": "m", "prompt": null}', "prompt", "Expected `str | array`, got `null`"),
        (b'{"model": "m", "prompt": [1, 2]}', "prompt", "Expected `str`, got `int`"),
        (b'{"model": "m", "prompt": []}', "prompt", "Send exactly one prompt per request"),
        (
            b'{"model": "m", "prompt": "a", "logprobs": 3}',
            "logprobs",
            "`logprobs` is not supported",
        ),
        (
            b'{"model": "m", "prompt": "a", "messages": []}',
            "messages",
            "`messages` is not supported",
        ),
        (b'{"model": "m", "prompt": "a", "temperature": 9}', "temperature", "`float` <= 2.0"),
        (b'{"prompt": "a"}', "model", "missing required field `model`"),
        (b'{"model": "m", "prompt": "a", "x": ' + DEEP + b"}", None, "nested too deeply"),
        (b'{"model": "m", "prompt": ' + DEEP + b"}", None, "nested too deeply"),
    ],
)
def test_bad_legacy_requests(body: bytes, param: str | None, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)) as raised:
        decode_completion_request(body)

    assert raised.value.param == param


@pytest.mark.parametrize(
    "fields",
    [{"echo": False}, {"echo": None}, {"suffix": ""}, {"suffix": None}, {"best_of": 1}],
)
def test_legacy_fields_that_do_not_change_the_answer_are_dropped(fields: dict[str, Any]) -> None:
    # Chat upstreams do not know them; forwarded, they would refuse the request.
    request = decode_completion_request(
        msgspec.json.encode({"model": "m", "prompt": "a", **fields})
    )

    assert request.extra == {}


@pytest.mark.parametrize(
    "fields",
    [{"echo": True}, {"suffix": "\n}"}, {"best_of": 3}, {"best_of": "two"}, {"echo": "yes"}],
)
def test_legacy_fields_that_would_change_the_answer_are_refused(fields: dict[str, Any]) -> None:
    body = msgspec.json.encode({"model": "m", "prompt": "a", **fields})
    with pytest.raises(ValidationError, match="not supported") as raised:
        decode_completion_request(body)

    assert raised.value.param == next(iter(fields))
