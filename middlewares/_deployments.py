"""Deployments: several upstreams behind one model name, balanced, limited and cooled.

A model may be served by several *deployments*: the same model on two accounts, two
regions, a self-hosted server with a hosted spill-over. `Deployments` is the provider the
`Router` sends such a model to; on each attempt it picks one deployment:

1. among those not tried yet for this request (a retry moves on; when every one was
   tried, all of them are candidates again), in order of `priority` (1 first; a later
   priority is used only when no deployment of an earlier one can take the request);
2. within a priority, by the model's `routing`: `weighted` (at random by weight),
   `least_busy` (fewest requests in flight from this instance) or `latency` (the lowest
   moving average of time to first token, exploring another one now and then);
3. it asks the store to admit the request (`Store.admit`): a deployment whose circuit is
   open, or that is at its own `requests_per_minute` / `tokens_per_minute` (the upstream
   account's limits, counted in the store so every instance shares them), is skipped, not
   tried, and the next one is asked.

Circuit breaking (`[health]`): a failure (no answer, a timeout, a 5xx, a 429) is written
to the store; `failures` of them within `window` open the deployment's circuit for
`cooldown` seconds, during which it gets no traffic. Then the next request is its one
half-open probe: its first chunk closes the circuit, its failure opens it again. An
upstream 429 with `Retry-After` cools the deployment for that long at once. The probe is
a reservation like any other: given back on every path, a cancelled request included,
and held at most a lease long if the instance dies. Because the state is in the store,
with Redis one instance's failures cool the deployment for all of them; each instance
also remembers the cooldowns it learned, so while a deployment rests it costs no store
call at all. A hung deployment thus costs one timeout per cooldown (the probe's), not one
per request.

With a store that sends calls together (Redis), the first attempt's admission is sent
with the request's admission batch (`prepare`), before the cache knows a hit from a miss:
the first attempt uses it, and whatever it took is given back when no attempt does (a
cache hit, a refusal, a cancellation) or when the deployment to try first has changed.
Retries and fallbacks are admitted when they come.

Only the outcome before the first chunk counts: retries and fallbacks happen only before
it, so the first chunk is when a deployment has proven itself. Moving to another
deployment is the retry middleware's work (each retry is one more attempt here); when the
failed attempt leaves another deployment ready, `ctx.failover_ready` tells it not to wait.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Annotated, Literal, NoReturn

import msgspec
import structlog
import trio

from pipeline import (
    API_NAMES,
    BaseProvider,
    Chunk,
    ConfigError,
    Context,
    GatewayTimeoutError,
    Positive,
    PositiveInt,
    Provider,
    ProviderError,
    RateLimitError,
    Request,
    ResponseStream,
    Section,
    UnavailableError,
    call_provider,
    clip_text,
    estimate_prompt_tokens,
)
from pipeline._stream import CLEANUP_TIMEOUT

from ._metrics import Metrics
from ._store import (
    Admission,
    Bucket,
    CircuitChange,
    CircuitPolicy,
    CircuitState,
    OnError,
    Store,
)
from ._store_policy import ErrorPolicy

__all__ = [
    "COOLING",
    "Deployment",
    "DeploymentConfig",
    "DeploymentStatus",
    "Deployments",
    "HealthChecks",
    "HealthConfig",
    "Routing",
]

log = structlog.get_logger("llm_proxy.deployments")

Routing = Literal["weighted", "least_busy", "latency"]

COOLING = "deployments_unavailable"
"""The code of the 503 raised when every deployment of a model is cooling down. The
fallback middleware moves on from it; the retry middleware does not wait for it."""

LATENCY_SMOOTHING = 0.3
"""The weight of each new time to first token in a deployment's moving average."""
DEFAULT_OUTPUT_TOKENS = 1024
"""The answer's token estimate for a deployment's token limit when a request sets none."""
MIN_PROBE_LEASE = 30.0
"""The shortest time a probe is held for if its instance dies before giving it back."""
AHEAD_PROBE_LEASE = 180.0
"""A probe's lease when it is taken in the admission batch, before the timeout middleware
has set the attempt's first-token deadline: the default first-token limit (120 s) with room
to spare. An attempt whose deadline is later gives that probe back and is admitted anew."""
STATE_VALUES = {"closed": 0, "open": 1, "half_open": 2}
"""The `deployment_circuit_state` gauge's value for each state."""


class DeploymentConfig(Section):
    """One upstream of a model: a provider, the model's name there, and its share."""

    provider: str
    """The `name` of the `[[providers]]` entry."""
    upstream_model: str | None = None
    """The model name sent upstream (unset: the model's own `upstream_model`, or its name)."""
    weight: Positive = 1.0
    """Its share of the traffic under `routing = "weighted"`."""
    priority: PositiveInt = 1
    """1 first; a deployment of a later priority is used only when no deployment of an
    earlier one can take the request (open, at its limits, or already tried)."""
    requests_per_minute: PositiveInt | None = None
    """The upstream account's request limit for it, shared by every instance through the
    store; a deployment at its limit is skipped (unset: no limit)."""
    tokens_per_minute: PositiveInt | None = None
    """The upstream account's token limit for it, like `requests_per_minute`."""


class HealthConfig(Section):
    """Circuit breaking: when a deployment stops getting traffic, and for how long."""

    enabled: bool = True
    """Break circuits at all (off: every deployment is always tried)."""
    failures: PositiveInt = 3
    """Failures (no answer, a timeout, a 5xx, a 429) within `window` that open the circuit."""
    window: Positive = 60.0
    """Seconds a failure counts for."""
    cooldown: Positive = 30.0
    """Seconds a deployment whose circuit opened rests; then one probe request decides."""
    exploration: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.1
    """Under `routing = "latency"`, the share of requests sent to a deployment that is not
    the fastest, so that the averages of the others stay current."""

    @property
    def policy(self) -> CircuitPolicy | None:
        """The circuit policy, or None when circuit breaking is off."""
        if not self.enabled:
            return None
        return CircuitPolicy(self.failures, self.window, self.cooldown)


class Deployment:
    """One upstream of a model, and what this instance knows about it.

    Args:
      provider: the provider that serves it.
      upstream_model: the model name sent to it.
      weight: its share under weighted routing.
      priority: 1 first; later priorities only when no earlier deployment can take it.
      requests_per_minute: its own request limit, counted in the store.
      tokens_per_minute: its own token limit, counted in the store.

    Attributes:
      name: `provider/upstream_model`: how metrics, logs and the store name it. Two models
        served by the same deployment share its circuit and limits.
      in_flight: requests this instance has in flight to it.
      ttft: the moving average of its time to first token, once measured.
    """

    __slots__ = (
        "circuit",
        "in_flight",
        "name",
        "priority",
        "provider",
        "requests_per_minute",
        "resting_until",
        "state",
        "tokens_per_minute",
        "ttft",
        "upstream_model",
        "weight",
    )

    def __init__(
        self,
        provider: Provider,
        upstream_model: str,
        *,
        weight: float = 1.0,
        priority: int = 1,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
    ) -> None:
        if weight <= 0:
            raise ConfigError(f"deployment weight must be positive, not {weight}")
        self.provider = provider
        self.upstream_model = upstream_model
        self.weight = weight
        self.priority = priority
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.name = f"{provider.name}/{upstream_model}"
        self.circuit = f"cb:{self.name}"
        self.in_flight = 0
        self.ttft: float | None = None
        # Until when this instance knows the deployment rests (a cooldown it learned).
        self.resting_until = -math.inf
        self.state = "closed"

    def __repr__(self) -> str:
        return f"Deployment({self.name!r}, weight={self.weight}, priority={self.priority})"


class DeploymentStatus(msgspec.Struct, frozen=True):
    """One deployment as the deployments endpoint lists it.

    Attributes:
      name: `provider/upstream_model`.
      provider: the provider's name.
      upstream_model: the model name sent upstream.
      priority: its priority.
      weight: its weight.
      state: its circuit: `closed`, `open` or `half_open` (`unknown` when the store
        cannot say).
      failures: failures within the window.
      cooldown_remaining: seconds until an open circuit may be probed.
      probing: whether a half-open probe is out.
      in_flight: requests this instance has in flight to it.
      ttft: the moving average of its time to first token on this instance, if measured.
    """

    name: str
    provider: str
    upstream_model: str
    priority: int
    weight: float
    state: str
    failures: int
    cooldown_remaining: float
    probing: bool
    in_flight: int
    ttft: float | None


def _counts_as_failure(error: BaseException) -> bool:
    """Whether an attempt's error says the deployment is unwell (not the request)."""
    if isinstance(error, (GatewayTimeoutError, UnavailableError)):
        return True
    if isinstance(error, ProviderError):
        status = error.upstream_status
        return status is None or status >= 500 or status == 429
    return False


def _cool_for(error: BaseException) -> float | None:
    """How long an upstream asked us to stay away: a 429's `Retry-After`."""
    if isinstance(error, ProviderError) and error.upstream_status == 429:
        return error.retry_after
    return None


class Deployments(BaseProvider):
    """The provider of one model with one or more deployments (see the module's notes).

    Args:
      model: the model's name as clients send it (the provider's `name`).
      deployments: its deployments.
      routing: `weighted`, `least_busy` or `latency`.
      store: where circuits and the deployments' own limits live; None keeps no state
        (every deployment is always tried; their limits are not enforced).
      policy: when circuits open; None turns circuit breaking off.
      exploration: under `latency` routing, the share of requests sent elsewhere.
      on_error: when the store fails, admit the request (`fail_open`) or answer 503.
      metrics: where the per-deployment instruments are (none recorded when None).
      rng: the source of randomness (a seeded `random.Random` in tests).

    Raises:
      ConfigError: no deployments, or two with the same name.
    """

    def __init__(
        self,
        model: str,
        deployments: Sequence[Deployment],
        *,
        routing: Routing = "weighted",
        store: Store | None = None,
        policy: CircuitPolicy | None = None,
        exploration: float = 0.1,
        on_error: OnError = "fail_open",
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not deployments:
            raise ConfigError(f"model `{model}` needs at least one deployment")
        names = [d.name for d in deployments]
        if len(set(names)) != len(names):
            raise ConfigError(f"model `{model}` lists a deployment twice")
        if routing not in ("weighted", "least_busy", "latency"):
            raise ConfigError(f"unknown routing `{routing}` for model `{model}`")
        self.name = model
        self.deployments = tuple(deployments)
        self.routing = routing
        self.store = store
        self.policy = policy if store is not None else None
        self.exploration = exploration
        self.metrics = metrics
        self.rng = rng if rng is not None else random.Random()
        self.errors = ErrorPolicy("deployments", on_error)
        self.supports_streaming = all(d.provider.supports_streaming for d in deployments)
        # Every API: each deployment's provider is called through `call_provider`, which
        # decides whether it serves the call's API natively (as the Router does).
        self.native_apis = frozenset(API_NAMES)
        self._stateful = store is not None and (
            policy is not None
            or any(d.requests_per_minute or d.tokens_per_minute for d in deployments)
        )

    def __repr__(self) -> str:
        return f"Deployments({self.name!r}, {list(self.deployments)!r}, routing={self.routing!r})"

    # -- one attempt -----------------------------------------------------------------------

    async def execute(self, request: Request, ctx: Context) -> ResponseStream:
        deployment, admission, tokens = await self._choose(request, ctx)
        ctx.deployment = deployment.name
        ctx.deployments_tried.append(deployment.name)
        ctx.provider = deployment.provider.name
        ctx.upstream_model = deployment.upstream_model
        if deployment.upstream_model != request.model:
            request = msgspec.structs.replace(request, model=deployment.upstream_model)
        limits = ctx.stream_limits
        first_deadline = limits.first_token_deadline if limits is not None else math.inf
        if ctx.deadline is not None:
            first_deadline = min(first_deadline, ctx.deadline)
        attempt = _Attempt(self, deployment, ctx, admission.probe, tokens, first_deadline)
        try:
            stream = await call_provider(deployment.provider, request, ctx)
        except BaseException as exc:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + CLEANUP_TIMEOUT):
                await attempt.failed(exc)
            raise
        return _AttemptStream(stream, attempt)

    async def _choose(self, request: Request, ctx: Context) -> tuple[Deployment, Admission, int]:
        """The deployment for this attempt, its admission and the tokens reserved on it.

        The first attempt uses the admission `prepare` took in the admission batch, if any,
        when its deployment is still the one to try first; whatever it took is given back
        otherwise.

        Raises:
          RateLimitError: every deployment is at its own limits.
          UnavailableError: every deployment is cooling down (code `COOLING`).
        """
        ahead = ctx.admission_ahead
        if ahead is None or not isinstance(ahead, _Ahead) or ahead.used:
            return await self._choose_now(request, ctx, None)
        ahead.used = True
        if ahead.pool is not self or ctx.deployments_tried:
            await self._give_back_shielded(ahead)
            return await self._choose_now(request, ctx, None)
        try:
            chosen = await self._choose_now(request, ctx, ahead)
        except BaseException:
            if not ahead.taken:
                await self._give_back_shielded(ahead)
            raise
        if not ahead.taken:
            await self._give_back_shielded(ahead)
        return chosen

    async def _choose_now(
        self, request: Request, ctx: Context, ahead: _Ahead | None
    ) -> tuple[Deployment, Admission, int]:
        if len(self.deployments) == 1:
            return await self._choose_only(request, ctx, ahead)
        tried = ctx.deployments_tried
        fresh = [d for d in self.deployments if d.name not in tried]
        # Those tried already come last: a retry moves on while it can.
        passes = (
            [fresh, [d for d in self.deployments if d.name in tried]]
            if fresh
            else [list(self.deployments)]
        )
        waits: list[float] = []
        rate_limited = True
        now = trio.current_time()
        for candidates in passes:
            for priority in sorted({d.priority for d in candidates}):
                group = [d for d in candidates if d.priority == priority]
                while group:
                    ready = [d for d in group if d.resting_until <= now]
                    for resting in (d for d in group if d.resting_until > now):
                        waits.append(resting.resting_until - now)
                        rate_limited = False
                    if not ready:
                        break
                    if ahead is not None and not ahead.taken and ahead.deployment in ready:
                        deployment = ahead.deployment
                        admission, charged, tokens = await self._admit_ahead(ahead, request, ctx)
                    else:
                        deployment = self._pick(ready)
                        tokens = self._token_estimate(deployment, request)
                        admission, charged = await self._admit(deployment, tokens, ctx)
                    if admission.admitted:
                        # Settled later against the buckets, so only what was charged.
                        return deployment, admission, tokens if charged else 0
                    group = [d for d in ready if d is not deployment]
                    waits.append(admission.retry_after)
                    if admission.refused != "rate_limited":
                        rate_limited = False
                    if admission.refused == "open":
                        deployment.resting_until = now + admission.retry_after
                        self._saw_state(deployment, "open")
        self._refuse(waits, rate_limited)

    async def _choose_only(
        self, request: Request, ctx: Context, ahead: _Ahead | None
    ) -> tuple[Deployment, Admission, int]:
        """`_choose` for a model with one deployment: the same verdicts, without the
        candidate lists, priority groups and passes (a fast path for the common case)."""
        deployment = self.deployments[0]
        now = trio.current_time()
        if deployment.resting_until > now:
            self._refuse([deployment.resting_until - now], rate_limited=False)
        if ahead is not None:
            admission, charged, tokens = await self._admit_ahead(ahead, request, ctx)
        else:
            tokens = self._token_estimate(deployment, request)
            admission, charged = await self._admit(deployment, tokens, ctx)
        if admission.admitted:
            return deployment, admission, tokens if charged else 0
        if admission.refused == "open":
            deployment.resting_until = now + admission.retry_after
            self._saw_state(deployment, "open")
        self._refuse([admission.retry_after], admission.refused == "rate_limited")

    def _refuse(self, waits: list[float], rate_limited: bool) -> NoReturn:
        """Raise the error for a request no deployment admitted.

        Raises:
          RateLimitError: every deployment is at its own limits (`rate_limited`).
          UnavailableError: otherwise (code `COOLING`).
        """
        wait = min(waits) if waits else None
        model = clip_text(self.name)
        if rate_limited:
            raise RateLimitError(
                f"Every deployment of `{model}` is at its rate limit; try again shortly.",
                retry_after=wait,
            )
        raise UnavailableError(
            f"Every deployment of `{model}` is cooling down after failures; try again shortly.",
            code=COOLING,
            retryable=False,
            retry_after=wait,
        )

    def _pick(self, ready: list[Deployment]) -> Deployment:
        if len(ready) == 1:
            return ready[0]
        if self.routing == "least_busy":
            fewest = min(d.in_flight for d in ready)
            return self.rng.choice([d for d in ready if d.in_flight == fewest])
        if self.routing == "latency":
            unmeasured = [d for d in ready if d.ttft is None]
            if unmeasured:
                return self.rng.choice(unmeasured)
            fastest = min(ready, key=lambda d: d.ttft or 0.0)
            if self.rng.random() < self.exploration:
                return self.rng.choice([d for d in ready if d is not fastest])
            return fastest
        return self.rng.choices(ready, weights=[d.weight for d in ready])[0]

    def _token_estimate(self, deployment: Deployment, request: Request) -> int:
        limit = deployment.tokens_per_minute
        if limit is None:
            return 0
        output = request.output_limit or DEFAULT_OUTPUT_TOKENS
        return min(limit, estimate_prompt_tokens(request) + output)

    def _buckets(self, deployment: Deployment, tokens: int, requests: int) -> list[Bucket]:
        buckets = []
        if deployment.requests_per_minute is not None and requests:
            buckets.append(
                Bucket(f"dep:req:{deployment.name}", deployment.requests_per_minute, 60.0, requests)
            )
        if deployment.tokens_per_minute is not None and tokens:
            buckets.append(
                Bucket(f"dep:tok:{deployment.name}", deployment.tokens_per_minute, 60.0, tokens)
            )
        return buckets

    def _lease(self, ctx: Context) -> float:
        """How long a probe taken now is held at most, should its instance die."""
        lease = MIN_PROBE_LEASE
        if ctx.stream_limits is not None:
            lease = max(lease, ctx.stream_limits.first_token_deadline - trio.current_time())
        return lease

    async def _admit(
        self, deployment: Deployment, tokens: int, ctx: Context
    ) -> tuple[Admission, bool]:
        """The store's admission, and whether it charged the buckets (not when failing open)."""
        store = self.store
        if store is None or not self._stateful:
            return Admission(True), False
        lease = self._lease(ctx)
        try:
            admission = await store.admit(
                deployment.circuit, self._buckets(deployment, tokens, 1), lease
            )
        except Exception as exc:
            self.errors.failed(exc, ctx, "admit")  # raises when fail_closed
            return Admission(True), False
        self.errors.succeeded()
        if admission.probe is not None:
            self._saw_state(deployment, "half_open")
        return admission, True

    # -- the first attempt's admission, in the admission batch ------------------------------

    def prepare(self, request: Request, ctx: Context) -> None:
        """Start the first attempt's admission with the request's admission batch.

        Called (through the `Router`) by the pipeline just before the batch of the stateful
        middlewares' store calls is sent (`Context.admitted`): the deployment the first
        attempt would try is picked now and its admission (`Store.admit`) sent in the same
        write. The attempt uses it if that deployment is still the one to try (`_choose`);
        otherwise, or when no attempt comes (a cache hit, a refusal, a cancellation, an
        error), what it took is given back. Only with a store that sends calls when they
        are made (`batches_calls`): with any other, there is no round trip to save.
        """
        store = self.store
        if (
            store is None
            or not self._stateful
            or not getattr(store, "batches_calls", False)
            or ctx.admission_ahead is not None
            or ctx.deployments_tried
        ):
            return
        deployment = self._first_pick(trio.current_time())
        if deployment is None:
            return
        tokens = self._token_estimate(deployment, request)
        lease = self._lease(ctx) if ctx.stream_limits is not None else AHEAD_PROBE_LEASE
        if ctx.deadline is not None:
            lease = max(lease, ctx.deadline - trio.current_time())
        ahead = _Ahead(self, deployment, ctx, tokens, trio.current_time() + lease)
        try:
            ctx.at_end(ahead.end)
        except RuntimeError:
            return  # no pipeline watches this request: nothing would give it back
        try:
            ahead.pending = store.admit(
                deployment.circuit, self._buckets(deployment, tokens, 1), lease
            )
        except Exception:
            # The attempt admits as usual, and applies `on_error` if the store still fails.
            ahead.used = True
            return
        ctx.admission_ahead = ahead
        ctx.defer(ahead.check)

    def _first_pick(self, now: float) -> Deployment | None:
        """The deployment a first attempt would try first, as `_choose` picks it."""
        if len(self.deployments) == 1:
            only = self.deployments[0]
            return only if only.resting_until <= now else None
        for priority in sorted({d.priority for d in self.deployments}):
            ready = [
                d for d in self.deployments if d.priority == priority and d.resting_until <= now
            ]
            if ready:
                return self._pick(ready)
        return None

    async def _admit_ahead(
        self, ahead: _Ahead, request: Request, ctx: Context
    ) -> tuple[Admission, bool, int]:
        """`_admit` for the deployment `ahead` admitted: its answer, applied now.

        A probe whose lease would end before the attempt's first-token deadline is given
        back and the deployment admitted anew.
        """
        ahead.taken = True
        await ahead.check(True)  # answered already, unless the batch never went out
        deployment, result = ahead.deployment, ahead.result
        if isinstance(result, Admission):
            if result.probe is not None and ahead.lease_until < (
                trio.current_time() + self._lease(ctx)
            ):
                ahead.taken = False
                await self._give_back_shielded(ahead)
                ahead.taken = True
                tokens = self._token_estimate(deployment, request)
                admission, charged = await self._admit(deployment, tokens, ctx)
                return admission, charged, tokens
            self.errors.succeeded()
            if result.probe is not None:
                self._saw_state(deployment, "half_open")
            return result, True, ahead.tokens
        if isinstance(result, Exception):
            self.errors.failed(result, ctx, "admit")  # raises when fail_closed
            return Admission(True), False, ahead.tokens
        # Never answered (the batch was abandoned): not expected once an attempt runs.
        tokens = self._token_estimate(deployment, request)
        admission, charged = await self._admit(deployment, tokens, ctx)
        return admission, charged, tokens

    def _give_back(self, ahead: _Ahead) -> Awaitable[None] | None:
        """Start giving back what `ahead`'s admission took: its probe, its request and
        tokens on the deployment's buckets. None when it took nothing."""
        result, store, deployment, ctx = ahead.result, self.store, ahead.deployment, ahead.ctx
        ahead.result = None
        if not isinstance(result, Admission) or not result.admitted or store is None:
            return None
        started: list[Awaitable[None] | None] = []
        if result.probe is not None:
            started.append(
                self.errors.quietly(
                    ctx, "release probe", store.release_probe, deployment.circuit, result.probe
                )
            )
        buckets = self._buckets(deployment, -ahead.tokens, -1)
        if buckets:
            started.append(self.errors.quietly(ctx, "settle", store.settle, buckets))
        calls = [call for call in started if call is not None]  # None: done already
        if not calls:
            return None
        return _await_all(calls)

    async def _give_back_shielded(self, ahead: _Ahead) -> None:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CLEANUP_TIMEOUT):
            await ahead.check(False)  # answered already, unless the batch never went out
            pending = self._give_back(ahead)
            if pending is not None:
                await pending

    def ready_alternative(self, ctx: Context) -> bool:
        """Whether a deployment not tried yet for this request seems ready now."""
        now = trio.current_time()
        tried = ctx.deployments_tried
        return any(d.name not in tried and d.resting_until <= now for d in self.deployments)

    # -- outcomes --------------------------------------------------------------------------

    async def _record(
        self,
        deployment: Deployment,
        ctx: Context | None,
        ok: bool,
        *,
        probe: str | None = None,
        cool_for: float | None = None,
        closes: bool = False,
    ) -> None:
        """Write an outcome to the store, and learn the circuit's state from the answer."""
        if self.store is None or self.policy is None:
            return
        try:
            change = await self.store.record(
                deployment.circuit, ok, self.policy, probe=probe, cool_for=cool_for, closes=closes
            )
        except Exception as exc:
            self.errors.record(exc, ctx, "record")
            return
        self.errors.succeeded()
        self._learn(deployment, change)

    def _learn(self, deployment: Deployment, change: CircuitChange) -> None:
        if change.after == "open":
            deployment.resting_until = trio.current_time() + change.retry_after
        elif change.after == "closed":
            deployment.resting_until = -math.inf
        self._saw_state(deployment, change.after)

    def _saw_state(self, deployment: Deployment, state: str) -> None:
        """Note the state this instance last saw, and count a transition into it."""
        if deployment.state == state:
            return
        previous, deployment.state = deployment.state, state
        log.info(
            "circuit_" + state,
            model=self.name,
            deployment=deployment.name,
            previous=previous,
            cooldown_remaining=max(0.0, deployment.resting_until - trio.current_time()),
        )
        metrics = self.metrics
        if metrics is not None:
            metrics.series(metrics.circuit_state, self.name, deployment.name).set(
                STATE_VALUES[state]
            )
            metrics.series(metrics.circuit_transitions, self.name, deployment.name, state).inc()

    async def _settle(self, deployment: Deployment, ctx: Context, amount: int) -> None:
        if self.store is None or not amount:
            return
        buckets = self._buckets(deployment, amount, 0)
        if buckets:
            settling = self.errors.quietly(ctx, "settle", self.store.settle, buckets)
            if settling is not None:
                await settling

    # -- health ----------------------------------------------------------------------------

    async def check(self, deployment: Deployment, ok: bool) -> None:
        """Write an active health check's result: a failure counts, a success closes."""
        await self._record(deployment, None, ok, closes=ok)

    async def statuses(self) -> list[DeploymentStatus]:
        """Every deployment with its circuit's state (one store read).

        A store that cannot answer is reported as state `unknown`.
        """
        states: Iterable[CircuitState | None]
        if self.store is None or self.policy is None:
            states = [CircuitState("closed")] * len(self.deployments)
        else:
            try:
                states = await self.store.circuit_states([d.circuit for d in self.deployments])
            except Exception as exc:
                self.errors.record(exc, None, "circuit states")
                states = [None] * len(self.deployments)
        statuses = []
        for deployment, state in zip(self.deployments, states, strict=True):
            if state is not None:
                self._saw_state(deployment, state.state)
            statuses.append(
                DeploymentStatus(
                    name=deployment.name,
                    provider=deployment.provider.name,
                    upstream_model=deployment.upstream_model,
                    priority=deployment.priority,
                    weight=deployment.weight,
                    state=state.state if state is not None else "unknown",
                    failures=state.failures if state is not None else 0,
                    cooldown_remaining=state.retry_after if state is not None else 0.0,
                    probing=state.probing if state is not None else False,
                    in_flight=deployment.in_flight,
                    ttft=deployment.ttft,
                )
            )
        return statuses

    async def validate(self) -> None:
        for provider in {id(d.provider): d.provider for d in self.deployments}.values():
            await provider.validate()

    async def aclose(self) -> None:
        """Nothing to close: the providers belong to whoever built them (the stack)."""


async def _await_all(calls: list[Awaitable[None]]) -> None:
    for call in calls:
        await call


class _Ahead:
    """The first attempt's admission, taken in the request's admission batch (`prepare`).

    `check` (deferred on the context) learns the store's answer; `_choose` then takes it
    (`taken`) or gives it back; `end` (a `Context.at_end` hook) gives it back if no attempt
    came for it.
    """

    __slots__ = (
        "ctx",
        "deployment",
        "lease_until",
        "pending",
        "pool",
        "result",
        "taken",
        "tokens",
        "used",
    )

    def __init__(
        self,
        pool: Deployments,
        deployment: Deployment,
        ctx: Context,
        tokens: int,
        lease_until: float,
    ) -> None:
        self.pool = pool
        self.ctx = ctx
        self.deployment = deployment
        self.tokens = tokens
        self.lease_until = lease_until
        self.pending: Awaitable[Admission] | None = None
        # The store's answer (or its failure) once `check` has run; None once given back.
        self.result: Admission | Exception | None = None
        self.used = False  # an attempt (or the end) has dealt with it
        self.taken = False  # an attempt took it as its admission

    async def check(self, apply: bool) -> None:
        """Await the admission; never raises a refusal (another deployment may serve)."""
        pending, self.pending = self.pending, None
        if pending is None:
            return
        try:
            self.result = await pending
        except Exception as exc:
            self.result = exc

    def end(self, end: object) -> Awaitable[None] | None:
        """The request ended: give back an admission no attempt took."""
        if self.taken:
            return None
        # A failed admission took nothing, and was never the request's: as without it, the
        # request that no attempt came for notes no store error of the deployments.
        self.used = True
        if self.pending is not None:
            return self._end()  # never awaited (not expected): learn what it took first
        return self.pool._give_back(self)

    async def _end(self) -> None:
        await self.check(False)
        pending = self.pool._give_back(self)
        if pending is not None:
            await pending


class _Attempt:
    """One attempt on one deployment: its probe, its reserved tokens, its verdict.

    Exactly one of `failed`, `first_chunk` + `closed`, or `closed` settles it; each runs
    shielded by its caller, so a cancelled request still gives its probe back.
    """

    __slots__ = (
        "ctx",
        "deployment",
        "done",
        "first_deadline",
        "pool",
        "probe",
        "started",
        "succeeded",
        "tokens",
        "usage_tokens",
    )

    def __init__(
        self,
        pool: Deployments,
        deployment: Deployment,
        ctx: Context,
        probe: str | None,
        tokens: int,
        first_deadline: float,
    ) -> None:
        self.pool = pool
        self.deployment = deployment
        self.ctx = ctx
        self.probe = probe
        self.tokens = tokens
        self.first_deadline = first_deadline
        self.started = trio.current_time()
        self.succeeded = False
        self.done = False
        self.usage_tokens: int | None = None
        deployment.in_flight += 1
        metrics = pool.metrics
        if metrics is not None:
            metrics.series(metrics.deployment_requests, pool.name, deployment.name).inc()

    def _finish(self) -> bool:
        """Mark the attempt settled; False if it already was."""
        if self.done:
            return False
        self.done = True
        self.deployment.in_flight -= 1
        return True

    async def failed(self, error: BaseException | None) -> None:
        """The attempt failed before its first chunk, or was cut short (`error` None).

        Cut short or cancelled at its first-token deadline, it timed out: a failure. Cut
        short before it, the client went away: the probe is given back without a verdict.
        """
        if not self._finish():
            return
        pool, deployment = self.pool, self.deployment
        timed_out = (error is None or isinstance(error, trio.Cancelled)) and (
            trio.current_time() >= self.first_deadline
        )
        if timed_out or (error is not None and _counts_as_failure(error)):
            metrics = pool.metrics
            if metrics is not None:
                metrics.series(metrics.deployment_errors, pool.name, deployment.name).inc()
            cool_for = _cool_for(error) if error is not None else None
            await pool._record(deployment, self.ctx, False, probe=self.probe, cool_for=cool_for)
            self.ctx.failover_ready = pool.ready_alternative(self.ctx)
        elif self.probe is not None and pool.store is not None:
            releasing = pool.errors.quietly(
                self.ctx, "release probe", pool.store.release_probe, deployment.circuit, self.probe
            )
            if releasing is not None:
                await releasing
        await pool._settle(deployment, self.ctx, -self.tokens)

    def first_chunk(self) -> Awaitable[None] | None:
        """The deployment answered: it is well. A probe closes its circuit: that store
        call is returned to be awaited; otherwise there is nothing to wait for."""
        self.succeeded = True
        pool, deployment = self.pool, self.deployment
        ttft = trio.current_time() - self.started
        previous = deployment.ttft
        deployment.ttft = (
            ttft if previous is None else previous + LATENCY_SMOOTHING * (ttft - previous)
        )
        metrics = pool.metrics
        if metrics is not None:
            metrics.series(metrics.deployment_ttft, pool.name, deployment.name).observe(ttft)
        if self.probe is not None:
            return pool._record(deployment, self.ctx, True, probe=self.probe)
        return None

    def closed(self) -> Awaitable[None] | None:
        """The stream was closed: settle the tokens, or judge an attempt cut before its start.

        Returns what is left to await, if anything: the stream's close runs it shielded,
        and pays for no scope when there is nothing (the usual case).
        """
        if not self.succeeded:
            return self.failed(None)
        if not self._finish():
            return None
        if self.tokens and self.usage_tokens is not None:
            return self.pool._settle(self.deployment, self.ctx, self.usage_tokens - self.tokens)
        return None


class _AttemptStream(ResponseStream):
    """The deployment's stream, telling its attempt about the first chunk, usage and end."""

    __slots__ = ("_attempt",)

    def __init__(self, inner: ResponseStream, attempt: _Attempt) -> None:
        super().__init__(inner, on_close=attempt.closed)
        self._attempt = attempt

    async def _next_chunk(self) -> Chunk:
        attempt = self._attempt
        if attempt.succeeded:
            chunk = await self._source.__anext__()
            if chunk.usage is not None:
                attempt.usage_tokens = chunk.usage.total_tokens
            return chunk
        try:
            chunk = await self._source.__anext__()
        except StopAsyncIteration:
            raise
        except BaseException as exc:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + CLEANUP_TIMEOUT):
                await attempt.failed(exc)
            raise
        pending = attempt.first_chunk()
        if pending is not None:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + CLEANUP_TIMEOUT):
                await pending
        if chunk.usage is not None:
            attempt.usage_tokens = chunk.usage.total_tokens
        return chunk


class HealthChecks:
    """Active health checks: a cheap request to each checked provider on a timer.

    Each check is the provider's `validate()` (a model list, usually), bounded by the
    interval. A failure counts as a failure of every deployment on that provider (enough
    of them open its circuits); a success closes their circuits. Open it around serving:
    `async with checks:` starts one task per provider and stops them on exit.

    Args:
      pools: the models' deployments.
      intervals: provider name -> seconds between checks (providers not named are not
        checked).
    """

    def __init__(self, pools: Iterable[Deployments], intervals: Mapping[str, float]) -> None:
        self.intervals = dict(intervals)
        self._targets: dict[str, list[tuple[Deployments, Deployment]]] = {}
        self._providers: dict[str, Provider] = {}
        for pool in pools:
            for deployment in pool.deployments:
                name = deployment.provider.name
                if name in self.intervals:
                    self._targets.setdefault(name, []).append((pool, deployment))
                    self._providers[name] = deployment.provider
        self._stack: AsyncExitStack | None = None
        self.checks = 0

    async def __aenter__(self) -> HealthChecks:
        async with AsyncExitStack() as stack:
            nursery = await stack.enter_async_context(trio.open_nursery())
            stack.callback(nursery.cancel_scope.cancel)
            for name in self._targets:
                nursery.start_soon(self._run, name)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def _run(self, name: str) -> None:
        interval = self.intervals[name]
        provider = self._providers[name]
        while True:
            await trio.sleep(interval)
            ok = False
            with trio.move_on_after(interval):
                try:
                    await provider.validate()
                    ok = True
                except Exception as exc:
                    log.info("health_check_failed", provider=name, error=str(exc))
            self.checks += 1
            for pool, deployment in self._targets[name]:
                await pool.check(deployment, ok)
