"""Response cache: exact-match answers replayed as the same chunks, with single flight.

The cache key is the SHA-256 of a canonical encoding (msgspec JSON, struct fields in
their declared order, dict keys sorted) of the whole request except `stream` and
`stream_options`, which change how the answer is delivered, not what it says: model
(as the client named it; it maps to one route), messages, every sampling parameter,
tools, `response_format`, `seed`, `n`, `stop`, `user`, any unknown field kept in
`request.extra`, the API the client spoke (`request.api`: an answer is never replayed
through another door, in a shape its client did not ask for) and the body as the client
sent it (`request.native`, so nested unknown fields count too). Entries are scoped per key
id unless the cache is `shared`.

An entry is the answer's whole chunk sequence (msgspec msgpack), stored only when the
stream finished cleanly: exhausted, with a finish reason for every choice, or an answer
that came whole in the client's API (an embeddings answer). A hit is
replayed as a stream of the same chunks, which the server sends as SSE or collects into
one response, whichever the client asked for.

`Cache-Control: no-cache` skips the lookup (the fresh answer is still stored);
`no-store` skips storing. `ctx.cache_status` and the `x-cache` header say `hit`, `miss`
or `bypass` (lookup skipped).

Single flight: identical requests that miss together make one upstream call. The first
becomes the leader; the others in this process wait on an event until the leader's
stream ends, then read the entry it stored. Across instances the leader also takes a
short lock in the store; a leader that finds the lock taken polls the store until the
other instance's entry appears, the lock frees, or `max_wait` runs out. When a leader
fails or its client leaves early nothing is stored, and its waiters all go to the
upstream at once (queueing them behind a new leader would make a failing upstream fail
them one after another). Nobody waits longer than `max_wait`: then it calls the upstream
itself; a wait that reaches `ctx.deadline` ends the request with a 504.

An answer served by a fallback model (`ctx.fallback`) is not stored: it is not
the asked model's answer.

At the `debug` log level every decision is logged with its reason: `cache` (hit, miss or
bypass) and `cache_store` (whether the answer was stored, and why not).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable
from dataclasses import dataclass

import msgspec
import structlog
import trio

from pipeline import (
    Chunk,
    Context,
    GatewayTimeoutError,
    Handler,
    Native,
    Outcome,
    Positive,
    PositiveInt,
    Request,
    ResponseStream,
    Section,
    StreamEnd,
)

from ._auth import ANONYMOUS
from ._store import OnError, Store, wait_until
from ._store_policy import ErrorPolicy

__all__ = ["Cache", "CacheConfig", "CacheStatistics"]


class CacheConfig(Section):
    """Exact-match answers replayed from the store."""

    enabled: bool = False
    """Turn the cache on."""
    ttl: Positive = 300.0
    """Seconds an answer stays cached."""
    max_entries: PositiveInt = 10_000
    """Most answers kept (memory store); the least recently used go first."""
    max_bytes: PositiveInt = 64 * 1024 * 1024
    """Most bytes of cached answers kept; a larger answer is not stored."""
    shared: bool = False
    """Share entries between keys (default: each key id has its own cache)."""


VERSION = "v1"
"""Part of every key: a change to the entry format changes it, so old entries are ignored."""
POLL_FIRST = 0.05
POLL_MAX = 1.0

_key_encoder = msgspec.json.Encoder(order="deterministic")
_entry_encoder = msgspec.msgpack.Encoder()
_entry_decoder = msgspec.msgpack.Decoder(list[Chunk])


def _directives(cache_control: str | None) -> tuple[bool, bool]:
    """(no-cache, no-store) from a `Cache-Control` header."""
    if not cache_control:
        return False, False
    names = {part.split("=", 1)[0].strip().lower() for part in cache_control.split(",")}
    return "no-cache" in names, "no-store" in names


_DELIVERY = ("stream", "stream_options")


def _finished(chunks: list[Chunk]) -> bool:
    """Whether every choice that appeared got a finish reason, or the answer came whole."""
    seen: set[int] = set()
    done: set[int] = set()
    for chunk in chunks:
        if chunk.whole is not None:
            return True
        for choice in chunk.choices:
            seen.add(choice.index)
            if choice.finish_reason is not None:
                done.add(choice.index)
    return bool(seen) and seen == done


class Cache:
    """Serve repeated requests from the store, and make concurrent identical misses one call.

    Args:
      store: where entries and locks live (its bounds evict the least recently used).
      ttl: seconds an entry lives.
      shared: share entries between keys (default: each key id has its own entries).
      max_wait: longest wait, in seconds, for another request's identical answer.
      lock_ttl: seconds the cross-instance lock lasts if its holder never releases it.
      max_chunks: answers with more chunks than this are not stored (bounds the memory
        a recording stream holds).
      on_error: when the store fails, go to the upstream uncached (`fail_open`, logged)
        or answer 503 (`fail_closed`); a failed write is only logged.
    """

    def __init__(
        self,
        store: Store,
        *,
        ttl: float = 300.0,
        shared: bool = False,
        max_wait: float = 30.0,
        lock_ttl: float = 60.0,
        max_chunks: int = 100_000,
        on_error: OnError = "fail_open",
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.shared = shared
        self.max_wait = max_wait
        self.lock_ttl = lock_ttl
        self.max_chunks = max_chunks
        self.policy = ErrorPolicy("cache", on_error)
        self.log = structlog.get_logger("llm_proxy.cache")
        self._flights: dict[str, trio.Event] = {}

    @classmethod
    def from_config(
        cls, cache: CacheConfig, *, store: Store, on_error: OnError = "fail_open"
    ) -> Cache:
        """Build from the `[cache]` section (whether to add it at all is `cache.enabled`).

        The entry and byte bounds belong to the store: `MemoryStore.from_config(cache)`.
        """
        return cls(store, ttl=cache.ttl, shared=cache.shared, on_error=on_error)

    def key_for(self, request: Request, ctx: Context) -> str:
        """The store key of the answer to `request`, in the scope of `ctx.key_id`."""
        native = request.native
        if native is not None and any(name in native.fields for name in _DELIVERY):
            fields = {k: v for k, v in native.fields.items() if k not in _DELIVERY}
            request = msgspec.structs.replace(request, native=Native(fields, native.untranslated))
        if request.stream or request.stream_options is not None:
            request = msgspec.structs.replace(request, stream=False, stream_options=None)
        scope = None if self.shared else (ctx.key_id or ANONYMOUS)
        digest = hashlib.sha256(_key_encoder.encode((scope, request))).hexdigest()
        return f"cache:{VERSION}:{digest}"

    async def __call__(self, request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        no_cache, no_store = _directives(ctx.headers.get("cache-control"))
        key = self.key_for(request, ctx)
        if no_cache:
            self._mark(
                ctx,
                "bypass",
                "cache-control: no-store, no-cache" if no_store else "cache-control: no-cache",
            )
            stream = await call_next(request, ctx)
            return stream if no_store else _Recording.wrap(self, stream, key, ctx, None, None)
        give_up = wait_until(ctx, self.max_wait)
        # No await between finding no flight and registering ours: in trio that makes
        # "am I the leader?" atomic within the process. The leader asks for the lock
        # with its lookup, in the same store call.
        flight = self._flights.get(key)
        if flight is None and not no_store:
            return await self._lead(request, ctx, call_next, key, give_up)
        chunks, _, _ = await self._lookup(key, ctx, False)
        if chunks is not None:
            return self._hit(chunks, ctx, "stored answer")
        if flight is None or no_store:  # no flight here means no-store
            self._mark(ctx, "miss", "no stored answer; cache-control: no-store")
            return await call_next(request, ctx)
        with trio.move_on_at(give_up):
            await flight.wait()
        if ctx.deadline is not None and trio.current_time() >= ctx.deadline:
            raise GatewayTimeoutError(
                "The request did not finish before its deadline "
                "(waiting for an identical request's answer)."
            )
        if flight.is_set():
            chunks = await self._read(key, ctx)
            if chunks is not None:
                return self._hit(chunks, ctx, "answer of an identical request in flight")
        # The leader failed (or is taking longer than `max_wait`): go ahead alone rather
        # than queue behind the next leader, so a failing upstream fails everyone at
        # once instead of one after another. A clean answer is still stored.
        self._mark(ctx, "miss", "an identical request in flight failed or took too long")
        stream = await call_next(request, ctx)
        return _Recording.wrap(self, stream, key, ctx, None, None)

    joins_admission = True
    """Its lookup joins the admission's store calls; it awaits them all itself."""

    async def _lead(
        self, request: Request, ctx: Context, call_next: Handler, key: str, give_up: float
    ) -> ResponseStream:
        """Look up as this process's leader for `key`: on a miss, fill the entry."""
        flight = self._flights[key] = trio.Event()
        token: str | None = None
        try:
            chunks, token, busy = await self._lookup(key, ctx, True)
            if chunks is not None:
                self._end_flight(key, flight)
                return self._hit(chunks, ctx, "stored answer")
            if busy:
                token, chunks = await self._lock(key, ctx, give_up)
                if chunks is not None:
                    await self._land(key, flight, token, ctx)
                    return self._hit(chunks, ctx, "stored by another instance meanwhile")
            self._mark(ctx, "miss", "no stored answer")
            stream = await call_next(request, ctx)
        except BaseException:
            await self._land(key, flight, token, ctx)
            raise
        return _Recording.wrap(self, stream, key, ctx, flight, token)

    async def _lookup(
        self, key: str, ctx: Context, lock: bool
    ) -> tuple[list[Chunk] | None, str | None, bool]:
        """Look up `key` (taking its lock on a miss, if `lock`) with the admission checks.

        The lookup is started, then every pending admission check (`Context.defer`) is
        awaited with it: one write to a networked store. A refusal among them is raised
        (the lock, if taken, given back first).

        Returns:
          (the entry, None, False) on a hit; on a miss, (None, the lock's token, False)
          when the lock was taken, (None, None, True) when another instance holds it, and
          (None, None, False) when no lock was asked for or the store failed (fail open).
        """
        name = f"lock:{key}" if lock else None
        try:
            pending = self.store.cache_lookup(key, name, self.lock_ttl)
        except Exception as exc:
            await ctx.admitted()  # a refusal of theirs comes first
            self.policy.failed(exc, ctx, "read")
            return None, None, False
        try:
            await ctx.admitted()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._give_back(pending, name, ctx)
            raise
        try:
            value, token = await pending
        except Exception as exc:
            self.policy.failed(exc, ctx, "read")
            return None, None, False
        self.policy.succeeded()
        if value is None:
            return None, token, lock and token is None
        try:
            return _entry_decoder.decode(value), None, False
        except msgspec.DecodeError:
            return None, None, False

    async def _give_back(
        self, pending: Awaitable[tuple[bytes | None, str | None]], lock: str | None, ctx: Context
    ) -> None:
        """Await a lookup whose answer is no longer wanted, and release its lock if taken."""
        try:
            _, token = await pending
        except Exception as exc:
            self.policy.record(exc, None, "read")
            return
        if lock is not None and token is not None:
            unlocking = self.policy.quietly(ctx, "unlock", self.store.unlock, lock, token)
            if unlocking is not None:
                await unlocking

    async def _read(self, key: str, ctx: Context) -> list[Chunk] | None:
        try:
            value = await self.store.cache_get(key)
        except Exception as exc:
            self.policy.failed(exc, ctx, "read")
            return None
        self.policy.succeeded()
        if value is None:
            return None
        try:
            return _entry_decoder.decode(value)
        except msgspec.DecodeError:
            return None

    async def _lock(
        self, key: str, ctx: Context, give_up: float
    ) -> tuple[str | None, list[Chunk] | None]:
        """Take the cross-instance lock, or wait for the instance that holds it.

        Returns:
          (the lock's token, None) when we lead; (None, the entry) when the other
          instance stored it meanwhile; (None, None) when we go ahead without the lock
          (it stayed taken until `give_up`, or the store failed and we fail open).
        """
        lock = f"lock:{key}"
        poll = POLL_FIRST
        while True:  # the first try was the lookup's
            now = trio.current_time()
            if now >= give_up:
                return None, None
            await trio.sleep(min(poll, give_up - now))
            poll = min(poll * 2, POLL_MAX)
            chunks = await self._read(key, ctx)
            if chunks is not None:
                return None, chunks
            try:
                token = await self.store.try_lock(lock, self.lock_ttl)
            except Exception as exc:
                self.policy.failed(exc, ctx, "lock")
                return None, None
            if token is not None:
                return token, None

    async def _land(
        self, key: str, flight: trio.Event | None, token: str | None, ctx: Context
    ) -> None:
        """End a flight: release the lock, wake this process's waiters.

        The waiters are woken however the unlock ends, cancellation included: a flight left
        behind would make every identical request wait `max_wait` for nothing.
        """
        try:
            if token is not None:
                unlocking = self.policy.quietly(
                    ctx, "unlock", self.store.unlock, f"lock:{key}", token
                )
                if unlocking is not None:
                    await unlocking
        finally:
            self._end_flight(key, flight)

    def _end_flight(self, key: str, flight: trio.Event | None) -> None:
        if flight is not None:
            if self._flights.get(key) is flight:
                del self._flights[key]
            flight.set()

    def _mark(self, ctx: Context, status: str, reason: str) -> None:
        ctx.cache_status = status
        ctx.response_headers["x-cache"] = status
        self.log.debug("cache", request_id=ctx.request_id, status=status, reason=reason)

    def _hit(self, chunks: list[Chunk], ctx: Context, reason: str) -> ResponseStream:
        self._mark(ctx, "hit", reason)
        return ResponseStream.from_chunks(chunks)

    def statistics(self) -> CacheStatistics:
        """A snapshot of this process's fills in flight (entries and locks are the store's)."""
        return CacheStatistics(flights=len(self._flights))


@dataclass(frozen=True)
class CacheStatistics:
    """What `Cache.statistics()` returns.

    Attributes:
      flights: misses being answered, each one upstream call that identical requests in
        this process wait for.
    """

    flights: int


class _Recording:
    """Keeps an answer's chunks as they pass, stores them if it finishes cleanly, then lands."""

    __slots__ = ("_cache", "_chunks", "_ctx", "_flight", "_key", "_overflow", "_token")

    def __init__(
        self,
        cache: Cache,
        key: str,
        ctx: Context,
        flight: trio.Event | None,
        token: str | None,
    ) -> None:
        self._cache = cache
        self._key = key
        self._ctx = ctx
        self._flight = flight
        self._token = token
        self._chunks: list[Chunk] = []
        self._overflow = False

    @classmethod
    def wrap(
        cls,
        cache: Cache,
        stream: ResponseStream,
        key: str,
        ctx: Context,
        flight: trio.Event | None,
        token: str | None,
    ) -> ResponseStream:
        recording = cls(cache, key, ctx, flight, token)
        ctx.at_end(recording.on_end)
        return _Recorder(stream, recording)

    def on_end(self, end: StreamEnd) -> Awaitable[None] | None:
        """Start the write (if the answer is clean) and the unlock; land once both are done."""
        cache = self._cache
        ctx = self._ctx
        writing = unlocking = None
        reason = self._unstorable(end)
        cache.log.debug(
            "cache_store", request_id=ctx.request_id, stored=reason is None, reason=reason
        )
        if reason is None:
            value = _entry_encoder.encode(self._chunks)
            writing = cache.policy.quietly(
                ctx, "write", cache.store.cache_set, self._key, value, cache.ttl
            )
        self._chunks = []
        if self._token is not None:
            unlocking = cache.policy.quietly(
                ctx, "unlock", cache.store.unlock, f"lock:{self._key}", self._token
            )
        if writing is None and unlocking is None:  # nothing to wait for (a memory store)
            cache._end_flight(self._key, self._flight)
            return None
        return self._land(writing, unlocking)

    def _unstorable(self, end: StreamEnd) -> str | None:
        """Why the answer must not be stored, or None when it may."""
        if end.outcome is not Outcome.COMPLETE:
            return f"the stream ended: {end.outcome.value}"
        if self._overflow:
            return "more chunks than max_chunks"
        if self._ctx.fallback is not None:
            return "answered by a fallback, not the asked model"
        if not _finished(self._chunks):
            return "a choice has no finish reason"
        return None

    async def _land(
        self, writing: Awaitable[None] | None, unlocking: Awaitable[None] | None
    ) -> None:
        try:
            if writing is not None:
                await writing
            if unlocking is not None:
                await unlocking
        finally:
            self._cache._end_flight(self._key, self._flight)


class _Recorder(ResponseStream):
    """Hands each chunk to a `_Recording` as it passes.

    A wrapper of its own rather than `observe`: the recording learns how the stream
    ended from its end hook, so this needs none of `observe`'s end handling, and a
    chunk costs one call less (streams pass every chunk through here on a miss).
    """

    __slots__ = ("_recording",)

    def __init__(self, inner: ResponseStream, recording: _Recording) -> None:
        super().__init__(inner)
        self._recording = recording

    async def _next_chunk(self) -> Chunk:
        chunk = await self._source.__anext__()
        recording = self._recording
        chunks = recording._chunks
        if len(chunks) < recording._cache.max_chunks:
            chunks.append(chunk)
        else:
            recording._overflow = True
        return chunk
