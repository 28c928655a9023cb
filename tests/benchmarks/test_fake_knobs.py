"""The fake upstream's knobs: errors, failures, broken streams, delays, byte-wise writes."""

from __future__ import annotations

import httpx
import msgspec
import pytest
import trio

from benchmarks.fake_upstream import FakeConfig, FakeUpstream, KnobError
from pipeline import ChatCompletion, Chunk

from ..helpers import parse_sse, read_events
from .bodies import CHAT, COMPLETIONS, MESSAGES, chat_body, messages_body


async def test_status_knob_answers_an_openai_error_with_retry_after(
    fake_upstream: FakeUpstream,
) -> None:
    headers = {"x-fake-status": "503", "x-fake-retry-after": "7"}
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        response = await client.post(CHAT, json=chat_body(stream=True), headers=headers)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "error": {
            "message": "Fake upstream error (status 503)",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }


async def test_retry_after_knob_may_be_an_http_date(fake_upstream: FakeUpstream) -> None:
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    headers = {"x-fake-status": "429", "x-fake-retry-after": date}
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        response = await client.post(CHAT, json=chat_body(), headers=headers)
    assert response.status_code == 429
    assert response.headers["retry-after"] == date


async def test_error_body_knob_is_sent_exactly(fake_upstream: FakeUpstream) -> None:
    headers = {"x-fake-status": "502", "x-fake-error-body": "<html>Bad Gateway</html>"}
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        response = await client.post(MESSAGES, json=messages_body(), headers=headers)
    assert response.status_code == 502
    assert response.text == "<html>Bad Gateway</html>"
    assert "retry-after" not in response.headers


async def test_fail_first_fails_only_the_first_requests_then_answers(
    fake_upstream: FakeUpstream,
) -> None:
    fake_upstream.config = FakeConfig(status=429, fail_first=2)
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        statuses = [(await client.post(CHAT, json=chat_body())).status_code for _ in range(4)]
        fake_upstream.reset()
        # The count is per server, across APIs and for header-set knobs alike.
        fake_upstream.config = FakeConfig()
        headers = {"x-fake-status": "500", "x-fake-fail-first": "1"}
        first = await client.post(COMPLETIONS, json={"prompt": "p"}, headers=headers)
        second = await client.post(MESSAGES, json=messages_body(), headers=headers)
    assert statuses == [429, 429, 200, 200]
    assert (first.status_code, second.status_code) == (500, 200)


async def test_drop_after_breaks_the_stream_after_that_many_events(
    fake_upstream: FakeUpstream,
) -> None:
    received = []
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        headers = {"x-fake-drop-after": "3"}
        async with client.stream("POST", CHAT, json=chat_body(stream=True), headers=headers) as r:
            assert r.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
                async for line in r.aiter_lines():
                    if line:
                        received.append(line)
    assert len(received) == 3
    assert all(msgspec.json.decode(line[6:], type=Chunk) for line in received)
    # Dropping is the server's doing, not the client going away.
    assert fake_upstream.disconnects == []


async def test_drop_after_all_events_still_withholds_the_clean_end(
    fake_upstream: FakeUpstream,
) -> None:
    # A role chunk, 2 content chunks, the finish chunk and [DONE]: 5 events, all sent.
    headers = {"x-fake-drop-after": "5", "x-fake-chunks": "2"}
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        with pytest.raises(
            httpx.RemoteProtocolError, match="without sending complete message body"
        ):
            await client.post(CHAT, json=chat_body(stream=True), headers=headers)


async def test_drop_after_cuts_a_whole_answer_short(fake_upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        with pytest.raises(httpx.RemoteProtocolError, match="received 10 bytes"):
            await client.post(CHAT, json=chat_body(), headers={"x-fake-drop-after": "10"})


async def test_no_finish_ends_streams_without_a_finish_reason(fake_upstream: FakeUpstream) -> None:
    headers = {"x-fake-no-finish": "true"}
    chat = chat_body(stream=True, stream_options={"include_usage": True})
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        openai = await client.post(CHAT, json=chat, headers=headers)
        anthropic = await client.post(MESSAGES, json=messages_body(stream=True), headers=headers)
        whole = await client.post(CHAT, json=chat_body(), headers=headers)
    events = parse_sse(openai.text)
    assert events[-1] == (None, "[DONE]")
    chunks = [msgspec.json.decode(data, type=Chunk) for _, data in events[:-1]]
    assert [chunk.finish_reason for chunk in chunks] == [None] * len(chunks)
    assert all(chunk.usage is None for chunk in chunks)
    names = [name for name, _ in parse_sse(anthropic.text)]
    assert names[-1] == "content_block_stop"
    assert "message_delta" not in names
    assert "message_stop" not in names
    completion = msgspec.json.decode(whole.content, type=ChatCompletion)
    assert completion.choices[0].finish_reason is None


async def test_malformed_after_sends_one_event_of_broken_json(fake_upstream: FakeUpstream) -> None:
    headers = {"x-fake-malformed-after": "2", "x-fake-chunks": "4"}
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        stream = await client.post(CHAT, json=chat_body(stream=True), headers=headers)
        whole = await client.post(CHAT, json=chat_body(), headers=headers)
    datas = [data for _, data in parse_sse(stream.text)]
    # The role chunk and two content chunks come first; the stream goes on after the bad one.
    assert datas[-1] == "[DONE]"
    for index, data in enumerate(datas[:-1]):
        if index == 3:
            with pytest.raises(msgspec.DecodeError, match="truncated"):
                msgspec.json.decode(data)
        else:
            msgspec.json.decode(data, type=Chunk)
    assert len(datas) == 1 + 4 + 1 + 1 + 1
    with pytest.raises(msgspec.DecodeError, match="truncated"):
        msgspec.json.decode(whole.content)


async def test_stream_error_after_ends_an_openai_stream_with_an_error_event(
    fake_upstream: FakeUpstream,
) -> None:
    headers = {"x-fake-stream-error-after": "1"}
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        response = await client.post(CHAT, json=chat_body(stream=True), headers=headers)
    datas = [msgspec.json.decode(data) for _, data in parse_sse(response.text)]
    assert len(datas) == 3
    assert datas[1]["choices"][0]["delta"]["content"]
    assert datas[2]["error"]["type"] == "server_error"


async def raw_exchange(url: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """One HTTP/1.1 request on a fresh socket; the raw response up to the server's close."""
    port = int(url.rsplit(":", 1)[1])
    lines = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", "connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines += ["content-type: application/json", f"content-length: {len(body)}"]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    data = bytearray()
    with trio.fail_after(10):
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(request)
            while chunk := await stream.receive_some():
                data += chunk
    return bytes(data)


def dechunk(body: bytes) -> tuple[bytes, list[int]]:
    """Decode a chunked transfer-encoded body: the data and each chunk's size."""
    data, sizes = bytearray(), []
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        sizes.append(size)
        if size == 0:
            return bytes(data), sizes
        data += body[:size]
        body = body[size + 2 :]


async def test_byte_by_byte_writes_each_byte_as_its_own_chunk(fake_upstream: FakeUpstream) -> None:
    body = msgspec.json.encode(chat_body(stream=True))
    plain = await raw_exchange(fake_upstream.url, CHAT, body, {})
    bytewise = await raw_exchange(fake_upstream.url, CHAT, body, {"x-fake-byte-by-byte": "1"})
    plain_data, plain_sizes = dechunk(plain.partition(b"\r\n\r\n")[2])
    data, sizes = dechunk(bytewise.partition(b"\r\n\r\n")[2])
    assert data == plain_data
    assert len(data) > 1000
    assert sizes == [1] * len(data) + [0]
    assert len(plain_sizes) < 20


async def test_byte_by_byte_answers_reassemble_in_httpx(fake_upstream: FakeUpstream) -> None:
    headers = {"x-fake-byte-by-byte": "true"}
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        plain = await client.post(CHAT, json=chat_body())
        bytewise = await client.post(CHAT, json=chat_body(), headers=headers)
        plain_stream = await client.post(MESSAGES, json=messages_body(stream=True))
        stream = await client.post(MESSAGES, json=messages_body(stream=True), headers=headers)
    assert bytewise.content == plain.content
    assert stream.content == plain_stream.content


async def test_ttft_holds_back_the_first_event_not_the_headers(
    fake_upstream: FakeUpstream,
) -> None:
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        headers = {"x-fake-ttft": "60"}
        async with client.stream("POST", CHAT, json=chat_body(stream=True), headers=headers) as r:
            assert r.status_code == 200
            with trio.move_on_after(0.3):
                await read_events(r.aiter_lines(), 1)
                pytest.fail("an event arrived before the time to first token")
    with trio.fail_after(10):
        (disconnect,) = await fake_upstream.wait_for_disconnects(1)
    assert disconnect.events_sent == 0


async def test_chunk_delay_spaces_the_chunks(fake_upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        headers = {"x-fake-chunk-delay": "60"}
        async with client.stream("POST", CHAT, json=chat_body(stream=True), headers=headers) as r:
            lines = r.aiter_lines()
            with trio.fail_after(10):
                first = await read_events(lines, 2)
            with trio.move_on_after(0.3):
                await read_events(lines, 1)
                pytest.fail("a chunk arrived before its delay")
    # The first frame is the role chunk and the first content chunk.
    assert '"role":"assistant"' in first[0]
    assert '"content":"The q' in first[1]
    with trio.fail_after(10):
        (disconnect,) = await fake_upstream.wait_for_disconnects(1)
    assert disconnect.events_sent == 2


async def test_a_whole_answer_waits_for_the_whole_generation(fake_upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        with trio.move_on_after(0.3) as waited:
            await client.post(CHAT, json=chat_body(), headers={"x-fake-chunk-delay": "60"})
    assert waited.cancelled_caught
    with trio.fail_after(10):
        (disconnect,) = await fake_upstream.wait_for_disconnects(1)
    assert (disconnect.path, disconnect.events_sent) == (CHAT, 0)


async def test_small_delays_still_deliver_every_event_in_order(
    fake_upstream: FakeUpstream,
) -> None:
    headers = {"x-fake-ttft": "0.01", "x-fake-chunk-delay": "0.005", "x-fake-chunks": "5"}
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        response = await client.post(MESSAGES, json=messages_body(stream=True), headers=headers)
    names = [name for name, _ in parse_sse(response.text)]
    assert names.count("content_block_delta") == 5
    assert names[0] == "message_start"
    assert names[-1] == "message_stop"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-fake-chunks", "many"),
        ("x-fake-chunks", "0"),
        ("x-fake-status", "302"),
        ("x-fake-fail-first", "1"),
        ("x-fake-chunk-delay", "-1"),
        ("x-fake-models", "a"),
        ("x-fake-nonsense", "1"),
    ],
)
async def test_bad_knob_headers_are_rejected(
    fake_upstream: FakeUpstream, header: str, value: str
) -> None:
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        response = await client.post(CHAT, json=chat_body(), headers={header: value})
    assert response.status_code == 400
    assert "knob" in response.json()["error"]["message"]


def test_bad_knobs_are_rejected_when_the_config_is_built() -> None:
    with pytest.raises(KnobError, match="chunks"):
        FakeConfig(chunks=0)
    with pytest.raises(KnobError, match="fail_first needs an error status"):
        FakeConfig(fail_first=1)
    with pytest.raises(KnobError, match="seconds or an HTTP-date"):
        FakeConfig(status=429, retry_after="tomorrow")
