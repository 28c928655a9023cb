"""Errors reach clients in OpenAI's shape and status, and the server keeps serving."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import msgspec
import openai
import pytest
import structlog
from openai.types.chat import ChatCompletionMessageParam

from pipeline import (
    AuthenticationError,
    Context,
    GatewayTimeoutError,
    Handler,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    Pipeline,
    ProviderError,
    ProxyError,
    RateLimitError,
    Request,
    ResponseStream,
    UnavailableError,
    ValidationError,
)
from providers import MockProvider

from ..helpers import sse_data
from .conftest import Start, chat_body, in_thread

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]
SDK = Callable[[str], openai.OpenAI]


def rejecting(error: Exception) -> Pipeline:
    """A pipeline whose only middleware raises `error`."""

    async def reject(request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        raise error

    return Pipeline(MockProvider(), [reject])


@pytest.mark.parametrize(
    ("error", "sdk_error"),
    [
        (ValidationError("bad temperature", param="temperature"), openai.BadRequestError),
        (AuthenticationError("no such key"), openai.AuthenticationError),
        (PermissionDeniedError("not your model"), openai.PermissionDeniedError),
        (NotFoundError("no such model"), openai.NotFoundError),
        (PayloadTooLargeError("too big"), openai.APIStatusError),
        (RateLimitError("slow down", retry_after=2.5), openai.RateLimitError),
        (ProviderError("upstream broke", upstream_status=500), openai.InternalServerError),
        (GatewayTimeoutError("too slow"), openai.InternalServerError),
        (UnavailableError("overloaded"), openai.InternalServerError),
        (RuntimeError("a bug, with a secret sk-123"), openai.InternalServerError),
    ],
    ids=lambda value: type(value).__name__,
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_sdk_raises_the_matching_error(
    start_server: Start, sdk: SDK, error: Exception, sdk_error: type[Exception], stream: bool
) -> None:
    url = await start_server(rejecting(error))
    client = sdk(url)

    with pytest.raises(sdk_error) as raised:
        await in_thread(
            lambda: client.chat.completions.create(model="mock", messages=USER, stream=stream)
        )

    status = error.status if isinstance(error, ProxyError) else 500
    assert isinstance(raised.value, openai.APIStatusError)
    assert raised.value.status_code == status
    body = raised.value.body
    assert isinstance(body, dict)
    if isinstance(error, ProxyError):
        assert body["message"] == error.message
        assert body["type"] == error.type
        assert body["param"] == error.param
    else:
        # An unexpected exception is not shown to the client.
        assert "sk-123" not in body["message"]
        assert body["code"] == "internal_error"


async def test_retry_after_header(start_server: Start, http: httpx.AsyncClient) -> None:
    url = await start_server(rejecting(RateLimitError("slow down", retry_after=2.5)))

    response = await http.post(f"{url}/v1/chat/completions", json=chat_body())

    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.headers["x-request-id"].startswith("req_")


async def test_bad_input(start_server: Start, http: httpx.AsyncClient) -> None:
    url = await start_server(Pipeline(MockProvider()), max_body_bytes=1000)
    chat = f"{url}/v1/chat/completions"

    async def chunked(size: int) -> AsyncIterator[bytes]:
        """A body without a content-length: httpx sends it chunked."""
        for _ in range(size // 100):
            yield b" " * 100

    cases = {
        "malformed": await http.post(chat, content=b'{"model": "mock", "messages": ['),
        "not an object": await http.post(chat, content=b"[1, 2]"),
        "schema": await http.post(
            chat, json={"model": "mock", "messages": [{"role": "user", "content": 3}]}
        ),
        "missing": await http.post(chat, json={"messages": USER}),
        "too large": await http.post(chat, content=b" " * 5000),
        "too large, chunked": await http.post(chat, content=chunked(5000)),
        "wrong method": await http.get(chat),
        "unknown path": await http.post(f"{url}/v1/embeddings", json={}),
        "legacy prompt": await http.post(
            f"{url}/v1/completions", json={"model": "mock", "prompt": ["a", "b"]}
        ),
        "legacy missing prompt": await http.post(f"{url}/v1/completions", json={"model": "m"}),
    }
    expected = {
        "malformed": (400, None),
        "not an object": (400, None),
        "schema": (400, "messages[0].content"),
        "missing": (400, "model"),
        "too large": (413, None),
        "too large, chunked": (413, None),
        "wrong method": (405, None),
        "unknown path": (404, None),
        "legacy prompt": (400, "prompt"),
        "legacy missing prompt": (400, "prompt"),
    }

    for name, response in cases.items():
        status, param = expected[name]
        error = response.json()["error"]
        assert (name, response.status_code, error["param"]) == (name, status, param)
        assert set(error) == {"message", "type", "param", "code"}
        assert response.headers["x-request-id"].startswith("req_")
    assert cases["wrong method"].headers["allow"] == "POST"
    # The server still answers after all of that.
    good = await http.post(chat, json=chat_body())
    assert good.status_code == 200


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/v1/chat/completions", {"model": "mock", "messages": USER}),
        ("/v1/completions", {"model": "mock", "prompt": "a"}),
    ],
)
async def test_a_body_nested_too_deeply_is_a_400(
    start_server: Start, http: httpx.AsyncClient, path: str, fields: dict[str, object]
) -> None:
    url = await start_server(Pipeline(MockProvider()))
    deep = b"[" * 100_000 + b"]" * 100_000
    body = msgspec.json.encode(fields)[:-1] + b', "x": ' + deep + b"}"

    response = await http.post(url + path, content=body)

    assert response.status_code == 400
    assert "nested too deeply" in response.json()["error"]["message"]
    assert response.headers["x-request-id"].startswith("req_")


async def test_burst_of_bad_requests_then_a_good_one(start_server: Start, sdk: SDK) -> None:
    url = await start_server(Pipeline(MockProvider("fine")))
    client = sdk(url)

    def burst() -> str | None:
        for _ in range(50):
            with pytest.raises(openai.BadRequestError, match="Expected `array` of length >= 1"):
                client.chat.completions.create(model="mock", messages=[])
            with pytest.raises(openai.NotFoundError, match="Unknown path: POST /v1/nowhere"):
                client.post("/nowhere", cast_to=object)
        return (
            client.chat.completions.create(model="mock", messages=USER).choices[0].message.content
        )

    assert await in_thread(burst) == "fine"


async def test_unknown_model_is_404(start_server: Start, sdk: SDK) -> None:
    from pipeline import Route, Router

    url = await start_server(Pipeline(Router({"known": Route(MockProvider(), "known")})))
    client = sdk(url)

    with pytest.raises(openai.NotFoundError, match="The model `unknown` does not exist") as raised:
        await in_thread(lambda: client.chat.completions.create(model="unknown", messages=USER))

    assert isinstance(raised.value.body, dict)
    assert raised.value.body["param"] == "model"


async def test_error_after_the_first_chunk_ends_the_stream_with_an_error_event(
    start_server: Start, sdk: SDK, http: httpx.AsyncClient
) -> None:
    url = await start_server(Pipeline(MockProvider(chunks=6, fail_after=3)))
    client = sdk(url)

    def read() -> list[str]:
        texts = []
        with pytest.raises(openai.APIError, match="mock stream broke"):
            for chunk in client.chat.completions.create(model="mock", messages=USER, stream=True):
                texts.append(chunk.choices[0].delta.content or "")
        return texts

    with structlog.testing.capture_logs() as logs:
        texts = await in_thread(read)
        response = await http.post(f"{url}/v1/chat/completions", json=chat_body(stream=True))

    assert len(texts) == 3
    assert response.status_code == 200
    events = sse_data(response.text)
    assert len(events) == 4
    assert "[DONE]" not in events
    error = msgspec.json.decode(events[-1])["error"]
    assert error["type"] == "upstream_error"
    assert error["code"] == "stream_error"
    failures = [entry for entry in logs if entry["event"] == "stream_failed"]
    assert len(failures) == 2
    assert failures[0]["events_sent"] == 3
    assert failures[0]["log_level"] == "warning"


async def test_error_before_the_first_chunk_is_an_http_error(
    start_server: Start, http: httpx.AsyncClient
) -> None:
    url = await start_server(Pipeline(MockProvider(fail_after=0)))

    response = await http.post(f"{url}/v1/chat/completions", json=chat_body(stream=True))

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "stream_error"


async def test_any_unexpected_failure_is_a_500_in_the_openai_shape_logged_once(
    start_server: Start, http: httpx.AsyncClient
) -> None:
    # A middleware leaves a header that HTTP cannot carry (not latin-1): building the
    # response itself fails, outside anything that answers errors on the way.
    async def bad_header(request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        ctx.response_headers["x-note"] = "\u2603"
        return await call_next(request, ctx)

    url = await start_server(Pipeline(MockProvider(), [bad_header]))
    with structlog.testing.capture_logs() as logs:
        responses = [
            await http.post(f"{url}/v1/chat/completions", json=chat_body(stream=stream))
            for stream in (False, True)
        ]

    for response in responses:
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "internal_error"
        assert response.headers["x-request-id"].startswith("req_")
    failures = [entry for entry in logs if entry["log_level"] == "error"]
    assert [entry["request_id"] for entry in failures] == [
        response.headers["x-request-id"] for response in responses
    ]


async def test_requests_turned_away_before_the_pipeline_are_logged_once(
    start_server: Start, http: httpx.AsyncClient
) -> None:
    url = await start_server(Pipeline(MockProvider()))
    with structlog.testing.capture_logs() as logs:
        bad_body = await http.post(f"{url}/v1/chat/completions", content=b"{not json")
        bad_path = await http.get(f"{url}/v2/nothing")
        bad_method = await http.get(f"{url}/v1/chat/completions")
    rejected = [entry for entry in logs if entry["event"] == "request_rejected"]
    assert [(r["status"], r["request_id"]) for r in rejected] == [
        (400, bad_body.headers["x-request-id"]),
        (404, bad_path.headers["x-request-id"]),
        (405, bad_method.headers["x-request-id"]),
    ]
