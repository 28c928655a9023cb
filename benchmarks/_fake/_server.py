"""The fake upstream: its handler, its records, and running it on the `http11` engine."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs

import msgspec
import trio
import trio.lowlevel

import http11

from ._answer import Api, BadRequest, Call, Reply, error_reply, whole_reply
from ._anthropic import ANTHROPIC, ANTHROPIC_COUNT
from ._azure import AzureChat
from ._completions import COMPLETIONS
from ._config import FakeConfig, KnobError, with_overrides
from ._embeddings import EMBEDDINGS
from ._gemini import GeminiGenerate, gemini_error
from ._openai import OPENAI, models_reply, openai_error
from ._responses import RESPONSES

__all__ = ["Disconnect", "FakeUpstream", "RecordedRequest", "run_fake_upstream"]

logger = logging.getLogger("benchmarks.fake_upstream")

# Paths that call the model, and the read-only ones; each names the API whose error shape
# and key check it uses.
_CALLS: dict[str, Api] = {
    "/v1/chat/completions": OPENAI,
    "/v1/messages": ANTHROPIC,
    "/v1/messages/count_tokens": ANTHROPIC_COUNT,
    "/v1/completions": COMPLETIONS,
    "/v1/embeddings": EMBEDDINGS,
    "/v1/responses": RESPONSES,
}
_READS: dict[str, Api] = {
    "/v1/models": OPENAI,
    "/v1/validate": COMPLETIONS,
    "/openai/models": AzureChat(""),
    "/v1beta/models": GeminiGenerate("", stream=False),
}
_VALIDATED = whole_reply(b'{"ok":true}')


class RecordedRequest(msgspec.Struct, frozen=True):
    """One request the fake saw.

    Attributes:
      number: its position among all requests the server saw (from 0).
      method: the HTTP method.
      path: the path, without the query string.
      headers: header names (lowercase) to values; test keys, so kept as sent.
      body: the decoded JSON body; None when empty, the raw bytes when not JSON.
    """

    number: int
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class Disconnect(msgspec.Struct, frozen=True):
    """A client that went away before its answer was complete.

    Attributes:
      request: the request's `number`.
      path: the request's path.
      events_sent: the stream events written before it went (0 for a whole answer).
    """

    request: int
    path: str
    events_sent: int


class _Progress:
    """How far one answer got, shared by its writer and its disconnect watcher."""

    __slots__ = ("finished", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.finished = False


@functools.lru_cache(maxsize=1024)
def _render(api: Api, call: Call, config: FakeConfig) -> Reply:
    # The fake is the baseline of throughput benchmarks: build each answer's bytes once per
    # distinct request shape and knob set, not once per request.
    return api.render(call, config)


def _decode_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body


class FakeUpstream:
    """A fake LLM upstream imitating OpenAI, Anthropic, Azure, Gemini and legacy completions.

    Run it with `run_fake_upstream`, or serve it as an `http11` handler. Answers follow
    `config`, overridden per request by `x-fake-*` headers (see `FakeConfig`).

    Routes: `POST /v1/chat/completions`, `POST /v1/messages`, `POST /v1/completions`,
    `POST /v1/messages/count_tokens`, `POST /v1/embeddings`, `POST /v1/responses`,
    Azure's `POST /openai/deployments/{deployment}/chat/completions?api-version=...`,
    Gemini's `POST /v1beta/models/{model}:generateContent` and
    `:streamGenerateContent?alt=sse`, `GET /v1/models`, `GET /v1/validate`,
    `GET /openai/models`, `GET /v1beta/models`. Other paths answer 404, other methods 405.

    Args:
      config: the server's default knobs.

    Attributes:
      config: the server's default knobs (may be replaced between requests).
      url: where it listens (`http://127.0.0.1:PORT`), once running.
      requests: every request seen, in order (when `config.record`).
      disconnects: every client that went away before its answer was complete.
    """

    def __init__(self, config: FakeConfig | None = None) -> None:
        self.config = config or FakeConfig()
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.disconnects: list[Disconnect] = []
        self._seen = 0
        self._failed = 0
        self._disconnected = trio.Event()

    def reset(self) -> None:
        """Forget the records and restart the `fail_first` count."""
        self.requests.clear()
        self.disconnects.clear()
        self._failed = 0

    async def wait_for_disconnects(self, count: int = 1) -> list[Disconnect]:
        """Wait until at least `count` disconnects are recorded; returns all of them."""
        while len(self.disconnects) < count:
            await self._disconnected.wait()
        return list(self.disconnects)

    async def __call__(self, request: http11.Request, responder: http11.Responder) -> None:
        """Answer one request (the engine's handler); a client hang-up cancels it."""
        number = self._seen
        self._seen += 1
        path, method = request.path, request.method.decode("latin-1")
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
        body = request.body
        if self.config.record:
            self.requests.append(RecordedRequest(number, method, path, headers, _decode_json(body)))
        query = request.target.partition(b"?")[2].decode("latin-1")
        reply, config = self._answer(method, path, headers, body, query)
        progress = _Progress()
        try:
            await _write(responder, reply, config, progress)
        except trio.Cancelled:
            if not progress.finished and not responder.shutting_down:
                self.disconnects.append(Disconnect(number, path, progress.sent))
                self._disconnected.set()
                self._disconnected = trio.Event()
            raise

    def _answer(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, query: str = ""
    ) -> tuple[Reply, FakeConfig]:
        """The reply to one request, and the knobs that shape how it is written."""
        config = self.config
        api = _CALLS.get(path) or _READS.get(path) or _path_api(path, query)
        if isinstance(api, BadRequest):
            return error_reply(api.body, api.status), config
        if path == "/v1/models" and "anthropic-version" in headers:
            # Anthropic lists its models at the same path, with its own key header and errors.
            api = ANTHROPIC
        if api is None:
            error = openai_error(404, f"Unknown path {path}", code="unknown_url")
            return error_reply(error, 404), config
        read = path in _READS
        allowed = "GET" if read else "POST"
        if method != allowed:
            reply = error_reply(api.error(405, f"Method {method} not allowed on {path}"), 405)
            headers_with_allow = (*reply.headers, (b"allow", allowed.encode()))
            return reply._replace(headers=headers_with_allow), config
        try:
            config = with_overrides(config, headers.items())
        except KnobError as exc:
            return error_reply(api.error(400, f"Bad fake upstream knob: {exc}"), 400), config
        if config.api_key is not None:
            rejected = api.check_key(headers, config.api_key)
            if rejected is not None:
                return error_reply(rejected.body, rejected.status), config
        if read:
            return (models_reply(config) if path == "/v1/models" else _VALIDATED), config
        if config.status != 200 and (config.fail_first is None or self._failed < config.fail_first):
            self._failed += 1
            message = f"Fake upstream error (status {config.status})"
            return error_reply(api.error(config.status, message), config.status, config), config
        try:
            call = api.decode(body, config)
        except BadRequest as exc:
            return error_reply(exc.body, exc.status), config
        return _render(api, call, config), config


_AZURE_CHAT = re.compile(r"/openai/deployments/(?P<deployment>[^/]+)/chat/completions")
_GEMINI = re.compile(
    r"/v1beta/models/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent)"
)


def _path_api(path: str, query: str) -> Api | BadRequest | None:
    """The API of a path that names its model: an Azure deployment, a Gemini model."""
    params = parse_qs(query)
    match = _AZURE_CHAT.fullmatch(path)
    if match:
        if "api-version" not in params:
            message = "Missing API version parameter; add `api-version` to the query string."
            return BadRequest(404, openai_error(404, message))
        return AzureChat(match["deployment"])
    match = _GEMINI.fullmatch(path)
    if match:
        stream = match["method"] == "streamGenerateContent"
        if stream and params.get("alt") != ["sse"]:
            return BadRequest(400, gemini_error(400, "this fake streams only with alt=sse"))
        return GeminiGenerate(match["model"], stream)
    return None


async def _write(
    responder: http11.Responder, reply: Reply, config: FakeConfig, progress: _Progress
) -> None:
    """Write a reply: delays, events one write each, and the `drop_after`/`byte_by_byte` knobs.

    A dropped answer aborts the connection without ending the body, so the client sees a
    broken stream rather than a clean end.
    """
    ok = reply.status == 200
    drop = config.drop_after if ok else None
    if ok and not reply.stream:
        delay = config.ttft + config.chunk_delay * (config.chunks - 1)
        if delay:
            await trio.sleep(delay)
    if not reply.stream and drop is None and not config.byte_by_byte:
        progress.finished = True
        await responder.respond(reply.status, list(reply.headers), reply.frames[0][0])
        return
    await responder.start(reply.status, list(reply.headers))
    if not reply.stream:
        body = reply.frames[0][0]
        await _send_body(responder, body if drop is None else body[:drop], config.byte_by_byte)
        if drop is not None:
            await responder.abort()
            return
    else:
        for index, frame in enumerate(reply.frames):
            delay = config.ttft if index == 0 else config.chunk_delay
            if delay:
                await trio.sleep(delay)
            for event in frame:
                if progress.sent == drop:
                    await responder.abort()
                    return
                await _send_body(responder, event, config.byte_by_byte)
                progress.sent += 1
        if drop is not None:
            await responder.abort()
            return
    progress.finished = True
    await responder.end()


async def _send_body(responder: http11.Responder, data: bytes, byte_by_byte: bool) -> None:
    if not byte_by_byte:
        await responder.write(data)
        return
    for i in range(len(data)):
        await responder.write(data[i : i + 1])
        # One write each: let the connection's writer send this byte before the next.
        await trio.lowlevel.checkpoint()


@asynccontextmanager
async def run_fake_upstream(
    config: FakeConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    graceful_timeout: float = 1.0,
) -> AsyncIterator[FakeUpstream]:
    """Serve a `FakeUpstream` on the `http11` engine for the duration of the block.

    Port 0 picks a free port; `upstream.url` says which. Leaving the block shuts the server
    down: idle connections close at once, answers still being written get
    `graceful_timeout` seconds to finish.

    Args:
      config: the server's default knobs.
      host: the address to listen on.
      port: the port to listen on (0: any free port).
      graceful_timeout: seconds open answers may take to finish on shutdown.
    """
    upstream = FakeUpstream(config)
    settings = http11.ServerConfig(grace_period=graceful_timeout, keep_alive_timeout=60.0)
    server = http11.Server(upstream, settings)
    # Yielding inside the nursery is safe here: a context manager resumes in the same task,
    # which is the case trio allows (unlike an async generator used as an iterator).
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(functools.partial(server.serve, host=host, port=port))
        upstream.url = urls[0]
        try:
            yield upstream
        finally:
            server.shutdown()
