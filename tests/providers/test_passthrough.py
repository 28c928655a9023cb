"""Nothing silently dropped: fields we do not model reach an upstream of the same API, and
come back from it, at every depth."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import Context, decode_request
from providers._native import RawEvents, frame
from providers._sse import ServerSentEvent

from .helpers import Upstream, event_response, json_response, make_provider, openai_chunk

KNOWN = {
    "model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop",
    "n", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs",
    "top_logprobs", "tools", "tool_choice", "parallel_tool_calls", "response_format", "stream",
    "stream_options", "user", "reasoning_effort", "role", "content", "name", "tool_calls",
    "tool_call_id", "refusal", "reasoning_content", "type", "text", "image_url", "function",
    "description", "parameters", "strict", "id", "arguments", "url", "detail",
}  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
unknown = st.dictionaries(
    st.text(min_size=1, max_size=10).filter(lambda name: name not in KNOWN and "__" not in name),
    json_values,
    max_size=3,
)


@st.composite
def chat_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid chat request with unknown fields on the request, messages, parts and tools."""
    part = {"type": "text", "text": draw(st.text(max_size=10)), **draw(unknown)}
    image = {"type": "image_url", "image_url": {"url": "https://x/y.png", **draw(unknown)}}
    user = {"role": "user", "content": [part, image], **draw(unknown)}
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    assistant = {
        "role": "assistant",
        "content": "ok",
        "tool_calls": [{**call, **draw(unknown)}],
        "reasoning_content": draw(st.text(max_size=10)),
        **draw(unknown),
    }
    tool = {"role": "tool", "tool_call_id": "c1", "content": "done", **draw(unknown)}
    function = {"name": "f", "parameters": {"type": "object"}, **draw(unknown)}
    return {
        "model": "m",
        "messages": [{"role": "system", "content": "s", **draw(unknown)}, user, assistant, tool],
        "tools": [{"type": "function", "function": function, **draw(unknown)}],
        "temperature": 0.5,
        **draw(unknown),
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chat_bodies())
async def test_an_openai_compatible_upstream_receives_unknown_fields_exactly(
    body: dict[str, Any],
) -> None:
    answer = {
        "id": "c",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}],
    }
    upstream = Upstream(json_response(answer))
    request = decode_request(json.dumps(body).encode())

    await (await make_provider("openai", upstream).execute(request, Context())).collect()

    assert upstream.body == body


async def test_a_replaced_field_is_sent_as_replaced_and_the_rest_as_sent() -> None:
    upstream = Upstream(json_response({"id": "c", "created": 0, "model": "m", "choices": []}))
    sent = {
        "model": "alias",
        "messages": [{"role": "user", "content": "hi", "prefix": True}],
        "seed": 1,
    }
    request = msgspec.structs.replace(
        decode_request(json.dumps(sent).encode()), model="upstream", seed=None
    )

    await (await make_provider("openai", upstream).execute(request, Context())).collect()

    assert upstream.body == {"model": "upstream", "messages": sent["messages"]}


async def test_a_whole_answer_reaches_the_client_as_the_upstream_sent_it() -> None:
    answer = {
        "id": "c",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "x",
                    "reasoning_content": "thought",
                    "annotations": [{"type": "url_citation"}],
                    "novel": 1,
                },
                "finish_reason": "stop",
            }
        ],
    }
    upstream = Upstream(json_response(answer))
    request = decode_request(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}')

    response = await (await make_provider("openai", upstream).execute(request, Context())).collect()

    assert response.raw is not None
    assert json.loads(response.raw) == answer
    assert response.choices[0].message.reasoning_content == "thought"


async def test_streamed_deltas_with_only_reasoning_or_unknown_fields_are_forwarded() -> None:
    def delta(**fields: Any) -> dict[str, Any]:
        chunk = openai_chunk()
        chunk["choices"][0]["delta"] = fields
        return chunk

    events = [
        openai_chunk(role="assistant", content=""),
        delta(reasoning_content="Let me see."),
        delta(novel_field={"a": 1}),
        openai_chunk(content="Hi"),
        openai_chunk(finish="stop"),
    ]
    upstream = Upstream(event_response(events))
    request = decode_request(
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true}'
    )

    stream = await make_provider("openai", upstream).execute(request, Context())
    chunks = [chunk async for chunk in stream]

    raw = b"".join(chunk.raw or b"" for chunk in chunks)
    sent = [json.loads(line[6:]) for line in raw.decode().split("\n\n") if line]
    assert sent[:5] == events
    assert chunks[0].choices[0].delta.reasoning_content == "Let me see."
    assert chunks[0].choices[0].delta.role == "assistant"


def test_events_held_before_the_answer_ride_on_its_first_piece() -> None:
    from pipeline import Chunk, ChunkChoice, Delta

    raw = RawEvents(lambda: Chunk("i", 0, "m"))
    start = ServerSentEvent('{"type":"message_start"}', "message_start")
    ping = ServerSentEvent('{"type":"ping"}', "ping")
    text = ServerSentEvent('{"type":"content_block_delta"}', "content_block_delta")

    assert raw.attach(None, start) is None
    assert raw.attach(None, ping) is None
    first = raw.attach(Chunk("i", 0, "m", [ChunkChoice(0, Delta(content="x"))]), text)
    later = raw.attach(None, ping)

    assert first is not None
    assert first.raw == frame(start) + frame(ping) + frame(text)
    assert later is not None
    assert later.raw == frame(ping)
    assert later.choices == []
