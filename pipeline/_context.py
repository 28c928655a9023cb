"""Per-request facts that are not part of the model call."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, TypeAlias

import msgspec
import trio

from ._types import Usage

if TYPE_CHECKING:
    from ._errors import ProxyError
    from ._stream import StreamEnd
    from ._types import Request

__all__ = ["ApiKey", "Context", "EndHook", "StreamLimits", "new_request_id"]

EndHook: TypeAlias = "Callable[[StreamEnd], Awaitable[None] | None]"
"""What `Context.at_end` takes: called once with how the request ended; may be async."""
AdmissionCheck: TypeAlias = "Callable[[bool], Awaitable[None]]"
"""What `Context.defer` takes: awaits a started store call; applies it (True) or gives back."""
Prepare: TypeAlias = "Callable[[Request, Context], None]"
"""A provider's optional `prepare(request, ctx)`: see `Context.admitted`."""


class ApiKey(msgspec.Struct, frozen=True):
    """What a client key may do; never holds the key itself.

    The auth middleware sets it in `ctx.key`; the rate and concurrency limiters and the
    fallback read the key's limits and allowed models from it.

    Attributes:
      id: the key's public name, used in logs, metrics and limit buckets.
      models: glob patterns (`gpt-4o*`, `*`) of the model names the key may ask for.
      requests_per_minute: this key's request limit (None: the rate limiter's default).
      tokens_per_minute: this key's token limit (None: the rate limiter's default).
      max_concurrency: this key's in-flight limit (None: the concurrency limiter's default).
      admin: the key may read the server's operational endpoints (`/metrics`).
    """

    id: str
    models: tuple[str, ...] = ("*",)
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrency: int | None = None
    admin: bool = False

    def allows(self, model: str) -> bool:
        """Whether the key may use `model` (case-sensitive glob match)."""
        return any(fnmatchcase(model, pattern) for pattern in self.models)

    def allowed_models(self, models: Iterable[str]) -> list[str]:
        """The names in `models` this key may use, in their order (for `GET /v1/models`)."""
        return [model for model in models if self.allows(model)]


def new_request_id() -> str:
    """A short random request id (`req_` and 24 hex digits).

    From the `random` module's generator, not the operating system's: an id names a
    request in logs and headers and guards nothing, and `secrets` cost a system call per
    request. The module's generator is reseeded in each forked worker.
    """
    return f"req_{random.getrandbits(96):024x}"


NOT_STARTED = float("-inf")
"""`Context.started` of a context made outside trio; the pipeline stamps it on arrival."""


def _now() -> float:
    try:
        return trio.current_time()
    except RuntimeError:
        return NOT_STARTED


class StreamLimits:
    """Time limits for one upstream attempt's stream, offered to the provider.

    The timeout middleware sets these in `ctx.stream_limits` before it calls the rest of
    the chain. A provider that bounds every read of its stream anyway (the HTTP providers
    do) folds them into its own bounds and sets `enforced`; the middleware then leaves the
    stream alone instead of opening a second cancel scope around every chunk.

    Attributes:
      first_token_deadline: trio time by which the stream's first chunk must arrive.
      idle: seconds the upstream may take for each later chunk, or None.
      enforced: set by a provider that enforces both.
      enclosed: the deadline of a cancel scope the offerer holds open around the whole
        call (the timeout middleware's first-token scope), or infinity. A provider need
        not open a scope of its own for a later deadline: this one passes first.
    """

    __slots__ = ("enclosed", "enforced", "first_token_deadline", "idle")

    def __init__(
        self, first_token_deadline: float, idle: float | None, enclosed: float = math.inf
    ) -> None:
        self.first_token_deadline = first_token_deadline
        self.idle = idle
        self.enforced = False
        self.enclosed = enclosed


class Context:
    """Everything a middleware needs to know about one request besides the request itself.

    Times are trio clock readings (`trio.current_time()`), so tests on a virtual clock see
    virtual times. Middlewares leave what they learn here for each other and for the access
    log; anything a third-party middleware wants to share goes in `notes`.

    Attributes:
      request_id: a unique id, echoed to the client as `x-request-id`.
      headers: the inbound HTTP headers, names lowercased (empty when called from code).
      key_id: the authenticated principal's key *id*; never the key itself.
      key: the authenticated key's settings (limits, allowed models), set by the auth middleware.
      door: the API the client called, by the server's door: `chat`, `completions` (the
        legacy text completions, which reach the pipeline as `chat`), `messages`,
        `count_tokens`, `responses` or `embeddings`; None when the pipeline is called
        from code (`Request.api` then says which API the call speaks).
      deadline: trio time by which the whole request must finish, if any.
      started: trio time the request arrived (a context made outside trio is stamped when
        the pipeline first sees it).
      first_chunk_at: trio time the first chunk left the provider, if it has.
      provider: the name of the provider that served (or last tried) the request.
      upstream_model: the model name sent upstream.
      usage: token usage, once the stream has reported it.
      cache_status: "hit", "miss", "bypass" or None when no cache ran.
      retries: how many times the request was retried or fell back.
      retried_errors: the errors that retry or fallback swallowed, oldest first.
      fallback: the alternative (`model` or `provider/model`) that served the request,
        when a fallback did; None when the model itself did.
      deployment: the deployment of the model that served (or last tried) the request.
      deployments_tried: the deployments tried for this request, oldest first; a retry
        goes to one not tried yet when there is one.
      failover_ready: set by the deployment router when the attempt that just failed
        leaves another deployment ready at once: a retry then need not wait.
      store_errors: the middlewares whose shared store failed during the request, each
        with the policy it applied (`"fail_open"` or `"fail_closed"`).
      concurrency_wait: seconds the request waited for a concurrency slot, when it waited.
      response_headers: headers that middlewares want the server to send
        (rate-limit state, cache status).
      notes: free-form notes between third-party middlewares (the built-in ones use the
        typed fields above).
      stream_limits: the timeout middleware's limits for the current upstream attempt,
        while the rest of the chain is being called (see `StreamLimits`).
      upstream_wait: seconds (wall clock, `time.perf_counter`) spent waiting on the provider:
        its `execute` call and every chunk pulled from its stream. The server subtracts it
        from its own handling time to report the proxy's overhead.
      admission_ahead: what the provider's `prepare` started for the request's first
        attempt, in the admission batch (see `admitted`), in the provider's own type; the
        provider uses it or gives it back.
    """

    __slots__ = (
        "_admission",
        "_ends",
        "_prepare",
        "_reports",
        "admission_ahead",
        "cache_status",
        "concurrency_wait",
        "deadline",
        "deployment",
        "deployments_tried",
        "door",
        "failover_ready",
        "fallback",
        "first_chunk_at",
        "headers",
        "key",
        "key_id",
        "notes",
        "provider",
        "request_id",
        "response_headers",
        "retried_errors",
        "retries",
        "started",
        "store_errors",
        "stream_limits",
        "upstream_model",
        "upstream_wait",
        "usage",
    )

    def __init__(
        self,
        *,
        request_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        key_id: str | None = None,
        deadline: float | None = None,
    ) -> None:
        self.request_id = request_id or new_request_id()
        self.headers: Mapping[str, str] = headers if headers is not None else {}
        self.key_id = key_id
        self.key: ApiKey | None = None
        self.deadline = deadline
        self.door: str | None = None
        self.started = _now()
        self.first_chunk_at: float | None = None
        self.provider: str | None = None
        self.upstream_model: str | None = None
        self.usage: Usage | None = None
        self.cache_status: str | None = None
        self.retries = 0
        self.retried_errors: list[ProxyError] = []
        self.fallback: str | None = None
        self.deployment: str | None = None
        self.deployments_tried: list[str] = []
        self.failover_ready = False
        self.store_errors: dict[str, str] = {}
        self.concurrency_wait: float | None = None
        self.response_headers: dict[str, str] = {}
        self.notes: dict[str, Any] = {}
        self.stream_limits: StreamLimits | None = None
        self.upstream_wait = 0.0
        self.admission_ahead: object | None = None
        # The provider's `prepare` and the request, set by the pipeline (see `admitted`).
        self._prepare: tuple[Prepare, Request] | None = None
        # Set by the pipeline that watches this request (None: none does yet).
        self._ends: list[EndHook] | None = None
        self._reports: list[EndHook] = []
        # Admission checks started and not yet awaited (`defer`); None: there are none.
        self._admission: list[AdmissionCheck] | None = None

    def at_end(self, hook: EndHook, *, report: bool = False) -> None:
        """Call `hook` once when this request ends, however it ends.

        The pipeline watches every request with one wrapper, so a middleware that needs a
        stream only to learn how it ended (to release a slot, settle tokens, write a log
        line) registers here instead of wrapping the stream itself. The request ends when
        its stream is exhausted, fails, is closed early or is cancelled, or, with no
        stream, when the chain raised (a rejection is `Outcome.ERROR`, a cancellation
        `Outcome.CANCELLED`); `hook` learns which through a `StreamEnd`, as an
        `observe(on_end=...)` callback would. It runs shielded from cancellation.

        Hooks run innermost first (the reverse of registration, as nested `observe`
        wrappers would). Each is called as soon as the one before it has been called, and
        what the async ones return is awaited afterwards, together: store calls that each
        hook starts go out in one batch. Then the `report` hooks run, innermost first,
        each awaited: they see everything the other hooks did (the access log sees the
        store errors of a settle).

        Args:
          hook: the callback.
          report: run it after every other hook has finished (logs, metrics).

        Raises:
          RuntimeError: no pipeline watches this request (call it from a middleware).
        """
        ends = self._ends
        if ends is None:
            raise RuntimeError("Context.at_end is for middlewares that a Pipeline calls")
        if report:
            self._reports.append(hook)
        else:
            ends.append(hook)

    @property
    def ttft(self) -> float | None:
        """Seconds from arrival to the first chunk, if one was produced."""
        if self.first_chunk_at is None:
            return None
        return self.first_chunk_at - self.started

    def __repr__(self) -> str:
        return f"Context(request_id={self.request_id!r}, key_id={self.key_id!r})"

    # -- admission: store checks started together, awaited together ------------------------

    def defer(self, check: AdmissionCheck) -> None:
        """Leave an admission check pending until the chain needs its outcome.

        A stateful middleware *starts* its store call (a networked store queues it) and
        registers here the check that awaits its answer, then calls the rest of the chain
        at once; the next one does the same, and the first that needs an outcome (the cache,
        to tell a hit from a miss) or the pipeline, before anything that does not join the
        admission, runs `admitted()`. So the calls of several middlewares go out in one
        write and their answers are read in one pass.

        `check(True)` applies the outcome: it raises the refusal, or notes what it took so
        that it is given back at the end (`at_end`). `check(False)` is called instead when
        an earlier check refused or the request is abandoned: it must not raise, only note
        what it took so that it is given back.
        """
        if self._admission is None:
            self._admission = [check]
        else:
            self._admission.append(check)

    async def admitted(self) -> None:
        """Await every pending admission check, in the order they were deferred.

        After the first refusal, the later checks are still awaited (their calls were made)
        and give back what they took; then the refusal is raised. Cancellation is raised
        likewise once every check has been awaited (the store calls that take something are
        shielded, so each check learns what it holds).

        Before the first batch goes out, the provider the pipeline ends in may join it:
        when it has a `prepare(request, ctx)` method (the `Router`, for a model's
        deployments), that is called once, with the request as the pipeline received it;
        it may start the first attempt's own store call, defer its check and leave what
        it took in `admission_ahead`, for the provider to use or give back.
        """
        checks = self._admission
        if not checks:
            return
        prepare = self._prepare
        if prepare is not None:
            self._prepare = None
            prepare[0](prepare[1], self)  # may defer one more check: it joins `checks`
        self._admission = None
        error: BaseException | None = None
        for check in checks:
            try:
                await check(error is None)
            except BaseException as exc:
                if error is None:
                    error = exc
        if error is not None:
            raise error

    async def abandon_admission(self) -> None:
        """Await the pending admission checks without applying any (the request failed)."""
        self._prepare = None
        checks = self._admission
        if not checks:
            return
        self._admission = None
        for check in checks:
            # The request's own error is what is raised; a check's (cancellation) is not.
            with contextlib.suppress(BaseException):
                await check(False)
