"""Rate limiting: requests and tokens per minute, per key, per model and over all keys.

Each limit is a bucket in the store (see `middlewares._store` for the algorithm, a leaky
bucket that drains continuously over its one-minute window). Before the call the limiter
reserves, in one atomic store call, one request in every request bucket and the token
estimate in every token bucket; if any bucket lacks room nothing is taken and the client
gets a 429 with `Retry-After`.

Tokens are estimated as the prompt's estimate plus the answer's limit (`max_tokens` or
`max_completion_tokens`, else `default_output_tokens`) for each of the `n` choices, and
settled when the stream ends:

- with the usage the upstream reported (`ctx.usage`, which the pipeline records; its
  total, or prompt plus completion when the upstream sends no total);
- a cache hit costs no tokens: the whole estimate is refunded;
- an error before the stream exists, or before its first chunk, refunds the estimate
  (the upstream refused; it answered nothing);
- a client that leaves before the stream exists is charged the prompt estimate (the
  upstream may already be working on it);
- a stream that ends without usage (the client went away, or it broke mid-stream) is
  charged what is known: the prompt estimate plus one token per chunk that was produced
  (streams carry about one token per chunk). Once the upstream accepted the request its
  prompt counts, since upstreams bill it too.

A request counts against the request limits once admitted, however it ends.

Real usage above the estimate may take a bucket beyond its limit; that only delays the
next admission. An estimate larger than a token limit reserves the whole limit; a prompt
alone larger than a token limit can never pass and is rejected at once (not retryable).

Headers (OpenAI's names), on success and on rejection, for the most constrained request
bucket and the most constrained token bucket: `x-ratelimit-limit-requests`,
`x-ratelimit-remaining-requests`, `x-ratelimit-reset-requests` and the same for `tokens`.
Reset values are durations in OpenAI's style (`20ms`, `1s`, `6m0s`, `1m30.5s`): the time
until the bucket is full again. A rejection adds `retry-after` (whole seconds, rounded up)
and `retry-after-ms`; they are set in `ctx.response_headers` and on the error's `headers`.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from pipeline import (
    Context,
    Handler,
    Outcome,
    PositiveInt,
    RateLimitError,
    Request,
    ResponseStream,
    Section,
    StreamEnd,
    estimate_prompt_tokens,
)

from ._auth import ANONYMOUS
from ._store import Bucket, BucketState, OnError, Reservation, Store
from ._store_policy import ErrorPolicy

__all__ = ["RateLimitConfig", "RateLimitStatistics", "RateLimiter"]


class RateLimitConfig(Section):
    """Default limits for every key, and limits over all keys together."""

    requests_per_minute: PositiveInt | None = None
    """Requests per minute per key (a key's own limit wins; unset: no limit)."""
    tokens_per_minute: PositiveInt | None = None
    """Tokens per minute per key, reserved before the call and settled with the real
    usage (a key's own limit wins; unset: no limit)."""
    global_requests_per_minute: PositiveInt | None = None
    """Requests per minute over all keys (unset: no limit)."""
    global_tokens_per_minute: PositiveInt | None = None
    """Tokens per minute over all keys (unset: no limit)."""


WINDOW = 60.0
_SHAPES = 1024
"""Most (key, model, limits) combinations whose buckets a limiter remembers."""


def format_duration(seconds: float) -> str:
    """A duration as OpenAI's rate-limit headers write it: `20ms`, `1s`, `6m0s`, `1h2m3.5s`."""
    # Rounded up to whole milliseconds; the tolerance keeps 6.0000000001 s from becoming 6.001 s.
    millis = math.ceil(seconds * 1000 - 1e-6) if seconds > 0 else 0
    if millis < 1000:
        return f"{millis}ms" if millis else "0s"
    minutes, millis = divmod(millis, 60_000)
    hours, minutes = divmod(minutes, 60)
    text = f"{millis / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return text


class _Limit:
    """One bucket of one request, with how the client is told about it."""

    __slots__ = ("bucket", "kind", "what")

    def __init__(self, bucket: Bucket, kind: str, what: str) -> None:
        self.bucket = bucket
        self.kind = kind
        self.what = what


_Limits = tuple[str, str, int | None, int | None, int | None, int | None, int | None, int | None]
"""A request's key id and model, then its six limits (key, model, global; requests, tokens)."""
_Shape = tuple[list[_Limit], list[tuple[int, str, str]]]


class RateLimiter:
    """Limit requests and tokens per minute, per key, per model and globally.

    Per-key limits come from the authenticated key (`ctx.key`, an `ApiKey`), falling back
    to the defaults given here; requests with no key id share the `anonymous` buckets.
    A limit left None is not enforced.

    Args:
      store: where the buckets live (a `MemoryStore`, or a store shared by instances).
      requests_per_minute: default request limit of each key.
      tokens_per_minute: default token limit of each key.
      global_requests_per_minute: request limit over all keys together.
      global_tokens_per_minute: token limit over all keys together.
      model_requests_per_minute: model name (as clients send it) -> its request limit.
      model_tokens_per_minute: model name -> its token limit.
      default_output_tokens: the answer's token estimate when the request sets no limit.
      on_error: when the store fails, admit the request (`fail_open`, logged) or answer
        503 (`fail_closed`).
    """

    def __init__(
        self,
        store: Store,
        *,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        global_requests_per_minute: int | None = None,
        global_tokens_per_minute: int | None = None,
        model_requests_per_minute: Mapping[str, int] | None = None,
        model_tokens_per_minute: Mapping[str, int] | None = None,
        default_output_tokens: int = 1024,
        on_error: OnError = "fail_open",
    ) -> None:
        self.store = store
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.global_requests_per_minute = global_requests_per_minute
        self.global_tokens_per_minute = global_tokens_per_minute
        self.model_requests_per_minute = dict(model_requests_per_minute or {})
        self.model_tokens_per_minute = dict(model_tokens_per_minute or {})
        self.default_output_tokens = default_output_tokens
        self.policy = ErrorPolicy("rate limiter", on_error)
        self._unsettled = 0
        self._shapes: dict[_Limits, _Shape] = {}

    @classmethod
    def from_config(
        cls,
        ratelimit: RateLimitConfig,
        *,
        store: Store,
        on_error: OnError = "fail_open",
        model_requests_per_minute: Mapping[str, int] | None = None,
        model_tokens_per_minute: Mapping[str, int] | None = None,
    ) -> RateLimiter:
        """Build from the `[ratelimit]` section (`[rate_limit]` in the file works too).

        The per-model limits live with the models (`[[models]]`); the application hands
        them over as `model_requests_per_minute` and `model_tokens_per_minute`.
        """
        return cls(
            store,
            requests_per_minute=ratelimit.requests_per_minute,
            tokens_per_minute=ratelimit.tokens_per_minute,
            global_requests_per_minute=ratelimit.global_requests_per_minute,
            global_tokens_per_minute=ratelimit.global_tokens_per_minute,
            model_requests_per_minute=model_requests_per_minute,
            model_tokens_per_minute=model_tokens_per_minute,
            on_error=on_error,
        )

    def _limits(self, request: Request, ctx: Context) -> tuple[list[_Limit], list[_Limit], int]:
        """The request and token buckets of this request, and its prompt's estimate.

        Raises:
          RateLimitError: the prompt alone exceeds a token limit (not retryable).
        """
        key_id = ctx.key_id or ANONYMOUS
        key = ctx.key
        model = request.model
        rpm = self.requests_per_minute
        tpm = self.tokens_per_minute
        if key is not None:
            rpm = key.requests_per_minute or rpm
            tpm = key.tokens_per_minute or tpm
        # Every input of the buckets, so a limit changed on the limiter counts at once.
        limits = (
            key_id,
            model,
            rpm,
            tpm,
            self.model_requests_per_minute.get(model),
            self.model_tokens_per_minute.get(model),
            self.global_requests_per_minute,
            self.global_tokens_per_minute,
        )
        shape = self._shapes.get(limits)
        if shape is None:
            shape = self._shape(limits)
        requests, token_limits = shape
        tokens: list[_Limit] = []
        prompt = 0
        if token_limits:
            prompt = estimate_prompt_tokens(request)
            output = request.output_limit or self.default_output_tokens
            estimate = prompt + output * (request.n or 1)
            for limit, name, what in token_limits:
                if prompt > limit:
                    raise RateLimitError(
                        f"This request's prompt has about {prompt} tokens, more than the "
                        f"{limit} tokens per minute {what} allow.",
                        code="request_too_large",
                        retryable=False,
                    )
                bucket = Bucket(name, limit, WINDOW, min(estimate, limit))
                tokens.append(_Limit(bucket, "tokens", what))
        return requests, tokens, prompt

    def _shape(self, limits: _Limits) -> _Shape:
        """The request buckets (their amount is always 1) and the token buckets' limits,
        names and descriptions of one key, model and pair of key limits; remembered, since
        building them costs more than the rest of the check. The cache is bounded (clients
        name the model), and cleared whole when full."""
        key_id, model, rpm, tpm, model_rpm, model_tpm, global_rpm, global_tpm = limits
        requests: list[_Limit] = []
        for limit, name, what in (
            (rpm, f"key:{key_id}", "of this key"),
            (model_rpm, f"model:{model}", f"of `{model}`"),
            (global_rpm, "global", "of this proxy"),
        ):
            if limit:
                bucket = Bucket(f"rl:req:{name}", limit, WINDOW, 1)
                requests.append(_Limit(bucket, "requests", what))
        tokens = [
            (limit, f"rl:tok:{name}", what)
            for limit, name, what in (
                (tpm, f"key:{key_id}", "of this key"),
                (model_tpm, f"model:{model}", f"of `{model}`"),
                (global_tpm, "global", "of this proxy"),
            )
            if limit
        ]
        if len(self._shapes) >= _SHAPES:
            self._shapes.clear()
        shape = self._shapes[limits] = (requests, tokens)
        return shape

    async def __call__(self, request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        requests, tokens, prompt = self._limits(request, ctx)
        if not requests and not tokens:
            return await call_next(request, ctx)
        buckets = [limit.bucket for limit in (*requests, *tokens)]
        try:
            pending = self.store.reserve(buckets)
        except Exception as exc:
            self.policy.failed(exc, ctx, "reserve")
            return await call_next(request, ctx)
        # Awaited with the other admission checks, before the first middleware that does
        # not join them (`Context.defer`): one write to a networked store for all of them.
        ctx.defer(partial(self._reserved, pending, requests, tokens, prompt, ctx))
        return await call_next(request, ctx)

    joins_admission = True
    """Leaves its reservation pending for the rest of the admission (`Context.defer`)."""

    async def _reserved(
        self,
        pending: Awaitable[Reservation],
        requests: list[_Limit],
        tokens: list[_Limit],
        prompt: int,
        ctx: Context,
        apply: bool,
    ) -> None:
        """Await the reservation; refuse the request, or note the tokens to settle."""
        try:
            reservation = await pending
        except Exception as exc:
            if apply:
                self.policy.failed(exc, ctx, "reserve")
            else:
                self.policy.record(exc, None, "reserve")
            return
        self.policy.succeeded()
        states = reservation.states
        headers = _headers("requests", states[: len(requests)])
        headers.update(_headers("tokens", states[len(requests) :]))
        if not reservation.granted:
            if apply:
                error = self._rejection(
                    reservation.retry_after, (*requests, *tokens), states, headers
                )
                ctx.response_headers.update(error.headers)
                raise error
            return
        ctx.response_headers.update(headers)
        if tokens:
            # Settled when the request ends, however it ends: refused before any answer
            # (nothing was used), the client gone while the upstream worked on the prompt
            # (charged the prompt; this is also where a stream cancelled before its first
            # chunk ends up when a retry middleware waits for that chunk inside
            # `call_next`), or with the usage the stream reported.
            ctx.at_end(_Settlement(self, tokens, prompt, ctx).on_end)

    def _rejection(
        self,
        retry_after: float,
        limits: Sequence[_Limit],
        states: Sequence[BucketState],
        headers: dict[str, str],
    ) -> RateLimitError:
        headers["retry-after"] = str(max(1, math.ceil(retry_after)))
        headers["retry-after-ms"] = str(math.ceil(retry_after * 1000))
        exhausted = [
            (limit, state)
            for limit, state in zip(limits, states, strict=True)
            if limit.bucket.amount > state.remaining
        ]
        reasons = "; ".join(
            f"{limit.kind} per minute {limit.what} "
            f"(limit {state.limit}, remaining {state.remaining})"
            for limit, state in exhausted
        )
        return RateLimitError(
            f"Rate limit reached: {reasons}. Try again in {format_duration(retry_after)}.",
            retry_after=retry_after,
            headers=headers,
        )

    def statistics(self) -> RateLimitStatistics:
        """A snapshot of this process's requests through the limiter (buckets: the store's)."""
        return RateLimitStatistics(unsettled=self._unsettled)


@dataclass(frozen=True)
class RateLimitStatistics:
    """What `RateLimiter.statistics()` returns.

    Attributes:
      unsettled: token estimates reserved for requests whose usage is not known yet.
    """

    unsettled: int


_HEADER_NAMES = {
    kind: (
        f"x-ratelimit-limit-{kind}",
        f"x-ratelimit-remaining-{kind}",
        f"x-ratelimit-reset-{kind}",
    )
    for kind in ("requests", "tokens")
}


def _headers(kind: str, states: Sequence[BucketState]) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*` headers for the bucket with the least room."""
    if not states:
        return {}
    state = states[0]
    for other in states[1:]:  # the least remaining, then the longest reset
        if other.remaining < state.remaining or (
            other.remaining == state.remaining and other.reset > state.reset
        ):
            state = other
    limit, remaining, reset = _HEADER_NAMES[kind]
    return {
        limit: str(state.limit),
        remaining: str(state.remaining),
        reset: format_duration(state.reset),
    }


class _Settlement:
    """Corrects one request's token reservation once its real usage is known."""

    __slots__ = ("_ctx", "_limiter", "_prompt", "_tokens")

    def __init__(
        self, limiter: RateLimiter, tokens: list[_Limit], prompt: int, ctx: Context
    ) -> None:
        self._limiter = limiter
        self._tokens = tokens
        self._prompt = prompt
        self._ctx = ctx
        limiter._unsettled += 1

    def on_end(self, end: StreamEnd) -> Awaitable[None] | None:
        ctx = self._ctx
        if ctx.cache_status == "hit":
            used = 0
        elif ctx.usage is not None:
            usage = ctx.usage
            # Some upstreams report prompt and completion tokens but no total.
            used = usage.total_tokens or usage.prompt_tokens + usage.completion_tokens
        elif end.chunks == 0 and end.outcome is Outcome.ERROR:
            used = 0  # refused before any answer: nothing was used
        else:
            used = self._prompt + end.chunks
        return self.settle(used)

    def settle(self, used: int) -> Awaitable[None] | None:
        """Start the correction of the reservation (None when there is nothing to correct)."""
        self._limiter._unsettled -= 1
        corrections = [
            Bucket(b.key, b.limit, b.window, used - b.amount)
            for b in (limit.bucket for limit in self._tokens)
            if used != b.amount
        ]
        if not corrections:
            return None
        limiter = self._limiter
        return limiter.policy.quietly(self._ctx, "settle", limiter.store.settle, corrections)
