"""The fake upstream speaks the legacy completions API of the custom-provider guide."""

from __future__ import annotations

import httpx
import msgspec

from benchmarks.fake_upstream import FakeUpstream, fake_text

from ..helpers import parse_sse
from .bodies import COMPLETIONS


async def test_whole_answer_has_text_finish_and_usage(fake_upstream: FakeUpstream) -> None:
    body = {"prompt": "Say something", "max_tokens": 100, "temperature": 0.5, "stream": False}
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        response = await client.post(COMPLETIONS, json=body)
    assert response.json() == {
        "text": fake_text(200),
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 4, "completion_tokens": 50},
    }


async def test_stream_has_no_finish_reason_until_the_last_event(
    fake_upstream: FakeUpstream,
) -> None:
    body = {"prompt": "Say something", "max_tokens": 10, "stream": True}
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        response = await client.post(COMPLETIONS, json=body, headers={"x-fake-chunks": "4"})
    events = parse_sse(response.text)
    assert events[-1] == (None, "[DONE]")
    pieces = [msgspec.json.decode(data) for _, data in events[:-1]]
    assert len(pieces) == 4
    assert all(set(piece) == {"text", "finish_reason"} for piece in pieces)
    assert [piece["finish_reason"] for piece in pieces] == [None, None, None, "length"]
    assert "".join(piece["text"] for piece in pieces) == fake_text(40)


async def test_validate_checks_the_key_when_one_is_required(fake_upstream: FakeUpstream) -> None:
    knob = {"x-fake-api-key": "sk-test"}
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        open_door = await client.get("/v1/validate")
        missing = await client.get("/v1/validate", headers=knob)
        wrong = await client.get("/v1/validate", headers={**knob, "authorization": "Bearer no"})
        right = await client.get(
            "/v1/validate", headers={**knob, "authorization": "Bearer sk-test"}
        )
    assert (open_door.status_code, open_door.json()) == (200, {"ok": True})
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert set(wrong.json()["error"]) == {"message", "type", "param", "code"}
    assert (right.status_code, right.json()) == (200, {"ok": True})


async def test_a_prompt_of_the_wrong_type_is_rejected(fake_upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=fake_upstream.url) as client:
        response = await client.post(COMPLETIONS, json={"prompt": 42})
    assert response.status_code == 400
    assert "prompt" in response.json()["error"]["message"]
