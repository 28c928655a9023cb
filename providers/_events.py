"""Translating an upstream's server-sent events into chunks.

A provider hands `HTTPProvider.stream_events` an `EventTranslator`, one per stream, that
turns each `ServerSentEvent` into at most one `Chunk` (`decode_event` decodes an event's
JSON and recognises an error object). `EventStream` does the rest: it reads the body under
the call's deadlines, decodes the events, holds back opening chunks that carry nothing (a
role) until the first one that does, turns every failure into the proxy's errors, and
closes the upstream response the moment it is closed, fails or is cancelled.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

import msgspec
import trio

import http11
from pipeline import Chunk, ProviderError, ProxyError, StreamError

from ._call import UpstreamCall
from ._errors import error_fields, redact, timeout_error, trim
from ._sse import EventStreamError, ServerSentEvent, SSEDecoder

__all__ = [
    "CLOSE_TIMEOUT",
    "EventStream",
    "EventTranslator",
    "UpstreamEventError",
    "decode_event",
]

# After the upstream said the answer is complete, closing the stream reads at most this
# many more pieces, for at most DRAIN_TIMEOUT seconds, looking for the end of the body (so
# the connection goes back to the pool) before it gives up and closes the connection.
MAX_DRAIN_READS = 4
DRAIN_TIMEOUT = 0.25
# Closing a response runs shielded from cancellation, but never longer than this.
CLOSE_TIMEOUT = 5.0

T = TypeVar("T")


class UpstreamEventError(Exception):
    """A translator's complaint about the stream: an error event, or data it cannot use.

    The stream turns it into a `ProviderError` with `upstream_status` when no chunk has been
    produced yet and a status is known (an error event before the answer started), and into
    a `StreamError` otherwise. The stream redacts the provider's key from the message and
    trims it, so a translator passes the upstream's text whole.

    Args:
      message: what went wrong, as the upstream said it.
      upstream_status: the HTTP status the upstream's error corresponds to, if known.
      code: the upstream's error code or type, if any.
    """

    def __init__(
        self, message: str, *, upstream_status: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.upstream_status = upstream_status
        self.code = code


def decode_event(decoder: msgspec.json.Decoder[T], data: str) -> T:
    """Decode an event's data with `decoder`.

    Raises:
      UpstreamEventError: the data is an error object (`{"error": {"message": ...}}`), with
        its message: how OpenAI-style servers report a failure mid-stream.
      msgspec.MsgspecError: the data is malformed.
    """
    try:
        return decoder.decode(data)
    except msgspec.ValidationError:
        message, code, _ = error_fields(data)
        if message is None:
            raise
        raise UpstreamEventError(
            f"the upstream reported an error mid-stream: {message}", code=code
        ) from None


class EventTranslator(Protocol):
    """Turns one upstream's events into chunks; one instance per stream.

    Attributes:
      done: set once the upstream said the answer is complete (`[DONE]`, `message_stop`);
        later events are ignored.
    """

    done: bool

    def feed(self, event: ServerSentEvent) -> Chunk | None:
        """The chunk this event carries, if any.

        Raises:
          UpstreamEventError: the event is an error, or cannot be used.
          msgspec.MsgspecError: the event's JSON is malformed.
        """
        ...

    def finish(self) -> Chunk | None:
        """Called once at the end of the stream; returns the usage chunk if one is still due.

        Raises:
          UpstreamEventError: the stream ended without a finish reason.
        """
        ...


def _carries_nothing(chunk: Chunk) -> bool:
    """Whether a chunk has nothing of the answer: no text, reasoning, tool call, refusal,
    finish reason, log probabilities or usage (OpenAI's opening role chunk, Anthropic's
    message_start)."""
    if chunk.usage is not None:
        return False
    for choice in chunk.choices:
        delta = choice.delta
        if (
            delta.content
            or delta.reasoning_content
            or delta.tool_calls
            or delta.refusal
            or choice.finish_reason is not None
            or choice.logprobs is not None
        ):
            return False
    return True


class EventStream:
    """The chunk source of `HTTPProvider.stream_events`: reads, decodes, translates.

    A class rather than an async generator, so that each read runs under the cancel scope
    its deadline needs, and the response is closed the moment the stream is closed, fails
    or is cancelled. Once closed it produces nothing more.

    Args:
      call: the upstream call, its response open.
      translator: turns the events into chunks.
      provider: the provider's name, for errors.
      timeout: seconds each read after the first chunk may take (the provider's `timeout`).
      secrets: the forms of the API key to redact from error messages (`secret_forms`).
    """

    __slots__ = (
        "_call",
        "_complete",
        "_decoder",
        "_eof",
        "_events",
        "_index",
        "_name",
        "_produced",
        "_response",
        "_roles",
        "_secrets",
        "_timeout",
        "_translator",
    )

    def __init__(
        self,
        call: UpstreamCall,
        translator: EventTranslator,
        *,
        provider: str,
        timeout: float,
        secrets: tuple[str, ...] = (),
    ) -> None:
        self._call = call
        self._response: http11.Response | None = call.response
        self._name = provider
        self._timeout = timeout
        self._secrets = secrets
        self._decoder = SSEDecoder()
        self._translator = translator
        self._events: list[ServerSentEvent] = []
        self._index = 0
        self._produced = False
        # Roles of opening chunks held back, by choice index, for the choice's first chunk.
        self._roles: dict[int, str] = {}
        self._eof = False
        self._complete = False

    async def __anext__(self) -> Chunk:
        if self._response is None or self._complete:
            raise StopAsyncIteration
        translator = self._translator
        try:
            while True:
                events = self._events
                while self._index < len(events) and not translator.done:
                    event = events[self._index]
                    self._index += 1
                    chunk = translator.feed(event)
                    if chunk is None:
                        continue
                    if self._produced:
                        if self._roles:
                            self._give_roles(chunk)
                        return chunk
                    if _carries_nothing(chunk):
                        self._hold_roles(chunk)
                        continue
                    self._give_roles(chunk)
                    self._produced = True
                    return chunk
                if translator.done or self._eof:
                    return await self._finish()
                data = await self._read()
                if data:
                    self._events = self._decoder.feed(data)
                else:
                    self._events = self._decoder.close()
                    self._eof = True
                self._index = 0
        except StopAsyncIteration:
            raise
        except BaseException as exc:
            await self.aclose()
            error = self._error(exc)
            if error is None:
                raise
            raise error from exc

    async def _read(self) -> bytes:
        """The next piece of the body (b"" at its end), within the call's deadlines.

        Until the first chunk, a read may last until the first-chunk deadline; after it,
        each read lasts at most `timeout` seconds, and never past the context's deadline.
        """
        call = self._call
        if self._produced:
            limit = self._timeout if call.idle is None else call.idle
            deadline = trio.current_time() + limit
            if deadline > call.ctx_deadline:
                deadline = call.ctx_deadline
        else:
            deadline = call.first_deadline
        assert self._response is not None
        with trio.CancelScope(deadline=deadline):
            return await self._response.receive_some()
        raise timeout_error(
            self._name, self._timeout_message(), self._secrets, retryable=not self._produced
        )

    def _timeout_message(self) -> str:
        if trio.current_time() >= self._call.ctx_deadline:
            if self._produced:
                return "the stream did not finish before the deadline"
            return "the stream did not start before the deadline"
        if self._produced:
            if self._call.idle is not None:
                return f"no data from the upstream for {self._call.idle:g}s (idle timeout)"
            return f"no data from the upstream for {self._timeout:g}s"
        return "no first chunk before the first-token timeout"

    async def _finish(self) -> Chunk:
        chunk = self._translator.finish()
        if self._eof:
            await self.aclose()
        else:
            # The answer is complete, though its body may not have ended: the stream ends
            # now, and `aclose` looks for the body's end.
            self._complete = True
        if chunk is None:
            raise StopAsyncIteration
        self._produced = True
        return chunk

    def _hold_roles(self, chunk: Chunk) -> None:
        for choice in chunk.choices:
            if choice.delta.role is not None:
                self._roles[choice.index] = choice.delta.role

    def _give_roles(self, chunk: Chunk) -> None:
        roles = self._roles
        for choice in chunk.choices:
            role = roles.pop(choice.index, None)
            if role is not None and choice.delta.role is None:
                choice.delta.role = role

    def _error(self, exc: BaseException) -> ProxyError | None:
        name = self._name
        secrets = self._secrets
        retryable = not self._produced
        if isinstance(exc, UpstreamEventError):
            message = trim(redact(exc.message, secrets))
            code = redact(exc.code, secrets) if exc.code else None
            if exc.upstream_status is not None and not self._produced:
                return ProviderError(
                    message, upstream_status=exc.upstream_status, provider=name, code=code
                )
            return StreamError(message, provider=name, retryable=retryable)
        if isinstance(exc, (msgspec.MsgspecError, EventStreamError)):
            return StreamError(
                redact(f"upstream `{name}` sent malformed data: {exc}", secrets),
                provider=name,
                retryable=retryable,
            )
        if isinstance(exc, http11.TimeoutException):
            return timeout_error(name, f"timed out reading: {exc}", secrets, retryable=retryable)
        if isinstance(exc, http11.HTTPError):
            return StreamError(
                redact(f"the connection to upstream `{name}` broke mid-stream: {exc}", secrets),
                provider=name,
                retryable=retryable,
            )
        return None

    async def aclose(self) -> None:
        response = self._response
        if response is None:
            return
        self._response = None
        self._events = []
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT):
            if self._complete:
                await self._drain(response)
            await response.aclose()

    @staticmethod
    async def _drain(response: http11.Response) -> None:
        """Read the rest of a complete answer's body, briefly and at best.

        A body read to its end lets the connection go back to the pool; one that does not
        end soon is not waited for: its connection is closed instead.
        """
        with trio.move_on_after(DRAIN_TIMEOUT):
            try:
                for _ in range(MAX_DRAIN_READS):
                    if not await response.receive_some():
                        return
            except http11.HTTPError:
                pass
