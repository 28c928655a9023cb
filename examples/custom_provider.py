"""A custom provider for a text-completions API: the complete example of docs/custom-providers.md.

The upstream takes `POST {base_url}/v1/completions` with `{prompt, max_tokens, temperature,
stream}` and answers `{text, finish_reason}`, or streams the same objects as server-sent
events ending with `data: [DONE]`. `TextCompletionsProvider` puts it behind the proxy's
chat-completions shape, streaming and not, with its errors mapped to the proxy's.

Run it with `python examples/custom_provider.py`: it starts the fake LLM upstream on
127.0.0.1 (a free port), asks it once for a whole answer and once for a stream, prints
both, and stops. The guide's code blocks are this file's definitions, word for word
(tests/test_custom_provider.py checks that).
"""

from __future__ import annotations

import math
import secrets
import time
from collections import deque
from email.utils import parsedate_to_datetime
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx2
import msgspec
import trio

import http11
from benchmarks.fake_upstream import run_fake_upstream
from pipeline import (
    BaseProvider,
    ChatCompletion,
    Chunk,
    ChunkChoice,
    ConfigError,
    Context,
    Delta,
    GatewayTimeoutError,
    Message,
    Pipeline,
    ProviderError,
    ProxyError,
    RateLimitError,
    Request,
    ResponseChoice,
    ResponseMessage,
    ResponseStream,
    StreamError,
    Usage,
    ValidationError,
    estimate_tokens,
    read_secret,
)
from providers import ProviderConfig, ServerSentEvent, SSEDecoder


class CompletionRequest(msgspec.Struct):
    """What the upstream takes."""

    prompt: str
    max_tokens: int | None
    temperature: float | None
    stream: bool


class CompletionUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Completion(msgspec.Struct):
    """A whole answer, or one event of a stream (`text` is then a piece of the answer)."""

    text: str = ""
    finish_reason: str | None = None
    usage: CompletionUsage | None = None


class UpstreamErrorBody(msgspec.Struct):
    message: str = ""


class UpstreamError(msgspec.Struct):
    """An error answer: `{"error": {"message": ...}}` (other fields are ignored)."""

    error: UpstreamErrorBody


# Encoders and decoders are made once and reused: building one per request costs more
# than the decoding itself.
request_encoder = msgspec.json.Encoder()
completion_decoder = msgspec.json.Decoder(Completion)
error_decoder = msgspec.json.Decoder(UpstreamError)

ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}


def render_prompt(messages: list[Message]) -> str:
    """Chat messages as one prompt: a `Role: text` line each, then the cue for the answer."""
    lines = [f"{ROLES.get(message.role, 'Tool')}: {message.text}" for message in messages]
    lines.append("Assistant:")
    return "\n".join(lines)


def usage_of(prompt: str, answer: str, reported: CompletionUsage | None) -> Usage:
    """The upstream's token counts when it reports them, an estimate when it does not."""
    if reported is not None:
        prompt_tokens, completion_tokens = reported.prompt_tokens, reported.completion_tokens
    else:
        prompt_tokens, completion_tokens = estimate_tokens(prompt), estimate_tokens(answer)
    return Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)


class TextCompletionsOptions(msgspec.Struct, forbid_unknown_fields=True):
    """The `options` table this provider understands."""

    max_tokens: int | None = None
    """The answer's token limit for requests that set none."""


class TextCompletionsProvider(BaseProvider):
    """A text-completions API behind the proxy's chat-completions shape.

    One pooled `httpx2.AsyncClient` serves every request; `aclose()` closes it. Every wait
    on the upstream (connecting, each read) is bounded by httpx2's timeouts, so a silent
    upstream becomes a `GatewayTimeoutError`, never a hang.

    Args:
      base_url: the API's root URL (without `/v1`).
      api_key: sent as `Authorization: Bearer`; never logged or shown.
      name: how logs, metrics and errors name this provider.
      timeout: seconds any single wait on the upstream may take.
      connect_timeout: seconds to open a connection.
      pool_size: the most connections kept open to the upstream.
      max_tokens: the answer's token limit for requests that set none.
      transport: an httpx2 transport instead of the network (`httpx2.MockTransport` in tests).

    Raises:
      ConfigError: `base_url` is not an http(s) URL.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        name: str = "text-completions",
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        pool_size: int = 20,
        max_tokens: int | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"provider `{name}`: base_url must be an http(s) URL")
        self.name = name
        self.max_tokens = max_tokens
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx2.AsyncClient(
            base_url=base_url,
            headers=headers,
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),  # keep none
            timeout=httpx2.Timeout(timeout, connect=connect_timeout),
            limits=httpx2.Limits(max_connections=pool_size, max_keepalive_connections=pool_size),
            transport=transport,
        )

    @classmethod
    def from_config(
        cls, config: ProviderConfig, *, transport: httpx2.AsyncBaseTransport | None = None
    ) -> TextCompletionsProvider:
        """Build from a `[[providers]]` section; the key comes from `api_key_env`.

        Raises:
          ConfigError: the key's variable is unset (the message names the variable), an
            option is unknown or has the wrong type, or `base_url` is missing.
        """
        try:
            options = msgspec.convert(config.options, TextCompletionsOptions)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"provider `{config.name}`: {exc}", param="options") from None
        if config.base_url is None:
            raise ConfigError(f"provider `{config.name}`: base_url is required", param="base_url")
        api_key = read_secret(config.api_key_env) if config.api_key_env else None
        return cls(
            config.base_url,
            api_key=api_key,
            name=config.name,
            timeout=config.timeout,
            connect_timeout=config.connect_timeout,
            pool_size=config.pool_size,
            max_tokens=options.max_tokens,
            transport=transport,
        )

    async def execute(self, request: Request, ctx: Context) -> ResponseStream:
        if request.tools:
            raise ValidationError("the completions API has no tools", param="tools")
        prompt = render_prompt(request.messages)
        body = CompletionRequest(
            prompt=prompt,
            max_tokens=request.output_limit or self.max_tokens,
            temperature=request.temperature,
            stream=request.stream,
        )
        response = await self.send("POST", "/v1/completions", request_encoder.encode(body))
        if request.stream:
            return ResponseStream(CompletionStream(response, self.name, request.model, prompt))
        data = await self.read(response)
        try:
            answer = completion_decoder.decode(data)
        except msgspec.MsgspecError as exc:
            raise StreamError(
                f"upstream `{self.name}` sent a malformed answer: {exc}",
                provider=self.name,
                retryable=True,  # nothing reached the client yet: trying again is safe
            ) from None
        message = ResponseMessage(content=answer.text)
        choice = ResponseChoice(0, message, answer.finish_reason or "stop")
        return ResponseStream.from_response(
            ChatCompletion(
                id="cmpl-" + secrets.token_hex(8),
                created=int(time.time()),
                model=request.model,
                choices=[choice],
                usage=usage_of(prompt, answer.text, answer.usage),
            )
        )

    async def validate(self) -> None:
        """Check the key and that the upstream answers: `GET /v1/validate`."""
        await self.read(await self.send("GET", "/v1/validate"))

    async def aclose(self) -> None:
        await self.client.aclose()

    async def send(self, method: str, path: str, body: bytes | None = None) -> httpx2.Response:
        """Send a request; return the response, its body unread, if its status is a success.

        Raises:
          ProviderError, RateLimitError: the upstream answered with an error status.
          ProviderError: the upstream could not be reached (retryable).
          GatewayTimeoutError: it did not answer in time.
        """
        request = self.client.build_request(method, path, content=body)
        try:
            response = await self.client.send(request, stream=True)
        except httpx2.TimeoutException:
            raise GatewayTimeoutError(f"upstream `{self.name}` did not answer in time") from None
        except httpx2.HTTPError as exc:
            raise ProviderError(
                f"cannot reach upstream `{self.name}`: {type(exc).__name__}: {exc}",
                provider=self.name,
            ) from None
        if response.is_success:
            return response
        error_body = await self.read(response)
        raise upstream_error(
            response.status_code, error_body, response.headers.get("retry-after"), self.name
        )

    async def read(self, response: httpx2.Response) -> bytes:
        """Read a whole body, then close the response, however the read ends."""
        try:
            return await response.aread()
        except httpx2.TimeoutException:
            raise GatewayTimeoutError(f"upstream `{self.name}` stopped answering") from None
        except httpx2.HTTPError as exc:
            raise StreamError(
                f"the connection to upstream `{self.name}` broke: {type(exc).__name__}",
                provider=self.name,
                retryable=True,
            ) from None
        finally:
            # Shielded: even a cancelled caller must give the connection back.
            with trio.CancelScope(shield=True):
                await response.aclose()


class StreamEvent(msgspec.Struct):
    """One event of the upstream's stream: a piece of the answer, or an error."""

    text: str = ""
    finish_reason: str | None = None
    error: UpstreamErrorBody | None = None


event_decoder = msgspec.json.Decoder(StreamEvent)


class CompletionStream:
    """The chunks of one streamed answer; it owns the upstream response until it ends.

    A class with `__anext__` and `aclose` rather than an async generator: whatever ends
    the stream (its end, an error, the consumer closing it or being cancelled) closes the
    response at once, and nothing is read before the consumer asks for the next chunk.

    Args:
      response: the upstream's open event-stream response.
      provider: the provider's name, for errors.
      model: the model name the chunks carry.
      prompt: the prompt sent, to estimate usage.
    """

    def __init__(self, response: httpx2.Response, provider: str, model: str, prompt: str) -> None:
        self.response = response
        # An async generator: `aclose` closes it.
        self.body = response.aiter_bytes()
        self.decoder = SSEDecoder()
        self.events: deque[ServerSentEvent] = deque()
        self.provider = provider
        self.id = "cmpl-" + secrets.token_hex(8)
        self.created = int(time.time())
        self.model = model
        self.prompt = prompt
        self.pieces: list[str] = []
        self.finish_reason: str | None = None
        self.at_end = False  # the upstream's body is complete
        self.usage_sent = False
        self.closed = False

    async def __anext__(self) -> Chunk:
        if self.closed:
            raise StopAsyncIteration
        try:
            return await self.next_chunk()
        except httpx2.TimeoutException:
            await self.aclose()
            raise GatewayTimeoutError(f"upstream `{self.provider}` stopped streaming") from None
        except httpx2.HTTPError as exc:
            await self.aclose()
            raise StreamError(
                f"the stream from `{self.provider}` broke: {type(exc).__name__}",
                provider=self.provider,
            ) from None
        except msgspec.MsgspecError as exc:
            await self.aclose()
            raise StreamError(
                f"upstream `{self.provider}` sent a malformed event: {exc}", provider=self.provider
            ) from None
        except BaseException:  # the end, our own errors, cancellation
            await self.aclose()
            raise

    async def next_chunk(self) -> Chunk:
        while True:
            while self.events:
                chunk = self.to_chunk(self.events.popleft())
                if chunk is not None:
                    return chunk
            if self.at_end:
                return self.usage_chunk()
            data = await anext(self.body, b"")
            if data:
                self.events.extend(self.decoder.feed(data))
            else:
                self.events.extend(self.decoder.close())
                self.at_end = True

    def to_chunk(self, event: ServerSentEvent) -> Chunk | None:
        if event.data == "[DONE]":
            return None  # the body ends right after it; reading on to its end frees the connection
        piece = event_decoder.decode(event.data)
        if piece.error is not None:
            message = piece.error.message or "unknown error"
            raise StreamError(
                f"upstream `{self.provider}` failed: {message}", provider=self.provider
            )
        if not piece.text and piece.finish_reason is None:
            return None
        delta = Delta(role=None if self.pieces else "assistant", content=piece.text or None)
        self.pieces.append(piece.text)
        self.finish_reason = piece.finish_reason or self.finish_reason
        choice = ChunkChoice(0, delta, piece.finish_reason)
        return Chunk(self.id, self.created, self.model, [choice])

    def usage_chunk(self) -> Chunk:
        """The last chunk: the usage, with no choices; after it, the end."""
        if self.usage_sent:
            raise StopAsyncIteration
        if self.finish_reason is None:
            raise StreamError(
                f"the stream from `{self.provider}` ended without a finish_reason",
                provider=self.provider,
            )
        self.usage_sent = True
        # This API streams no usage: estimate it from the prompt and the answer.
        usage = usage_of(self.prompt, "".join(self.pieces), None)
        return Chunk(self.id, self.created, self.model, [], usage)

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        with trio.CancelScope(shield=True):
            await self.body.aclose()
            await self.response.aclose()


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header: a number of seconds, or an HTTP-date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def upstream_error(status: int, body: bytes, retry_after: str | None, provider: str) -> ProxyError:
    """The proxy's error for an upstream's error answer, keeping the upstream's message.

    429 becomes a `RateLimitError`; any other status a `ProviderError`, which passes 4xx
    statuses and 503 on and turns other 5xx into 502, retryable for 408, 409, 429 and 5xx.
    """
    try:
        message = error_decoder.decode(body).error.message
    except msgspec.MsgspecError:
        message = body[:200].decode("utf-8", "replace")
    message = message or f"upstream `{provider}` answered HTTP {status}"
    seconds = retry_after_seconds(retry_after)
    if status == 429:
        return RateLimitError(message, retry_after=seconds)
    return ProviderError(message, upstream_status=status, provider=provider, retry_after=seconds)


class EngineCompletionsProvider(BaseProvider):
    """`TextCompletionsProvider` on `http11.Client`, the proxy's own HTTP/1.1 client.

    The same requests, answers and errors; only the client changes. httpx2 costs about
    500 us per request on trio, the engine's client a few tens: use this one on the hot
    path. It pools keep-alive connections (`pool_size`, the most recently used first),
    retries a request once on a fresh connection when a kept-alive one turns out closed,
    verifies TLS against the system's trust store, and follows `HTTPS_PROXY`. It keeps no
    cookies. Each wait runs under a trio deadline; a cancelled call frees its pool slot.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        name: str = "text-completions",
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        pool_size: int = 20,
        max_tokens: int | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"provider `{name}`: base_url must be an http(s) URL")
        self.name = name
        self.max_tokens = max_tokens
        self.base_url = base_url.rstrip("/")
        self.headers = [(b"content-type", b"application/json")]
        if api_key:
            self.headers.append((b"authorization", f"Bearer {api_key}".encode()))
        # read_timeout bounds each read, as httpx2's Timeout did above.
        self.client = http11.Client(
            pool_size=pool_size, connect_timeout=connect_timeout, read_timeout=timeout
        )

    async def execute(self, request: Request, ctx: Context) -> ResponseStream:
        if request.tools:
            raise ValidationError("the completions API has no tools", param="tools")
        prompt = render_prompt(request.messages)
        body = CompletionRequest(
            prompt=prompt,
            max_tokens=request.output_limit or self.max_tokens,
            temperature=request.temperature,
            stream=request.stream,
        )
        response = await self.send("POST", "/v1/completions", request_encoder.encode(body))
        if request.stream:
            stream = EngineCompletionStream(response, self.name, request.model, prompt)
            return ResponseStream(stream)
        data = await self.read(response)
        try:
            answer = completion_decoder.decode(data)
        except msgspec.MsgspecError as exc:
            raise StreamError(
                f"upstream `{self.name}` sent a malformed answer: {exc}",
                provider=self.name,
                retryable=True,
            ) from None
        message = ResponseMessage(content=answer.text)
        choice = ResponseChoice(0, message, answer.finish_reason or "stop")
        return ResponseStream.from_response(
            ChatCompletion(
                id="cmpl-" + secrets.token_hex(8),
                created=int(time.time()),
                model=request.model,
                choices=[choice],
                usage=usage_of(prompt, answer.text, answer.usage),
            )
        )

    async def validate(self) -> None:
        await self.read(await self.send("GET", "/v1/validate"))

    async def aclose(self) -> None:
        await self.client.aclose()

    async def send(self, method: str, path: str, body: bytes = b"") -> http11.Response:
        """Send a request; return the response, its body unread, if its status is a success."""
        try:
            response = await self.client.request(method, self.base_url + path, self.headers, body)
        except http11.TimeoutException:
            raise GatewayTimeoutError(f"upstream `{self.name}` did not answer in time") from None
        except http11.HTTPError as exc:  # refused, reset, TLS (the message names the problem)
            raise ProviderError(
                f"cannot reach upstream `{self.name}`: {type(exc).__name__}: {exc}",
                provider=self.name,
            ) from None
        if 200 <= response.status < 300:
            return response
        error_body = await self.read(response)
        retry_after = response.header(b"retry-after")
        raise upstream_error(
            response.status,
            error_body,
            retry_after.decode("latin-1") if retry_after else None,
            self.name,
        )

    async def read(self, response: http11.Response) -> bytes:
        """Read a whole body; the connection goes back to the pool once it is read."""
        try:
            return await response.read(limit=16 * 1024 * 1024)
        except http11.TimeoutException:
            raise GatewayTimeoutError(f"upstream `{self.name}` stopped answering") from None
        except http11.HTTPError as exc:
            raise StreamError(
                f"the connection to upstream `{self.name}` broke: {type(exc).__name__}",
                provider=self.name,
                retryable=True,
            ) from None
        finally:
            await response.aclose()  # frees the slot at once, even when cancelled


class EngineCompletionStream(CompletionStream):
    """`CompletionStream` over an `http11.Response`: the same chunks, the engine's errors."""

    def __init__(self, response: http11.Response, provider: str, model: str, prompt: str) -> None:
        self.engine_response = response
        self.decoder = SSEDecoder()
        self.events = deque()
        self.provider = provider
        self.id = "cmpl-" + secrets.token_hex(8)
        self.created = int(time.time())
        self.model = model
        self.prompt = prompt
        self.pieces = []
        self.finish_reason = None
        self.at_end = False
        self.usage_sent = False
        self.closed = False

    async def __anext__(self) -> Chunk:
        if self.closed:
            raise StopAsyncIteration
        try:
            return await self.next_chunk()
        except http11.TimeoutException:
            await self.aclose()
            raise GatewayTimeoutError(f"upstream `{self.provider}` stopped streaming") from None
        except http11.HTTPError as exc:
            await self.aclose()
            raise StreamError(
                f"the stream from `{self.provider}` broke: {type(exc).__name__}",
                provider=self.provider,
            ) from None
        except msgspec.MsgspecError as exc:
            await self.aclose()
            raise StreamError(
                f"upstream `{self.provider}` sent a malformed event: {exc}", provider=self.provider
            ) from None
        except BaseException:
            await self.aclose()
            raise

    async def next_chunk(self) -> Chunk:
        while True:
            while self.events:
                chunk = self.to_chunk(self.events.popleft())
                if chunk is not None:
                    return chunk
            if self.at_end:
                return self.usage_chunk()
            data = await self.engine_response.receive_some()
            if data:
                self.events.extend(self.decoder.feed(data))
            else:
                self.events.extend(self.decoder.close())
                self.at_end = True

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            # Synchronous release: a body read to its end returns the connection to the
            # pool, any other is closed.
            await self.engine_response.aclose()


async def main() -> None:
    """Start the fake upstream, ask for a whole answer and a stream, print both."""
    async with run_fake_upstream() as upstream:
        provider = TextCompletionsProvider(upstream.url, name="fake-completions")
        async with Pipeline(provider) as pipeline:
            await provider.validate()
            question = [Message(role="user", content="Tell me about foxes.")]
            answer = await pipeline.complete(Request(model="fake", messages=question))
            print("whole:   ", answer.text)
            print("usage:   ", answer.usage)
            print("streamed: ", end="")
            request = Request(model="fake", messages=question, stream=True)
            async with pipeline.stream(request) as stream:
                async for chunk in stream:
                    print(chunk.text, end="", flush=True)
            print()
        engine = EngineCompletionsProvider(upstream.url, name="fake-completions")
        async with Pipeline(engine) as pipeline:
            await engine.validate()
            question = [Message(role="user", content="Tell me about foxes.")]
            fast = await pipeline.complete(Request(model="fake", messages=question, stream=True))
            print("engine:  ", fast.text)


if __name__ == "__main__":
    trio.run(main)
