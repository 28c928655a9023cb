"""The Redis store: one set of limits, slots and cache entries for every proxy instance.

`RedisStore` implements `Store` on Redis (or Valkey), a Redis Cluster or a primary found
through Sentinel, with coredis (which runs on trio through anyio). Each operation is one
Lua script (run with EVALSHA; the script is loaded again if Redis forgot it, after a
restart) or a single command, so it is atomic across every instance that shares the
Redis. Times come from Redis's `TIME`, the one clock all instances share. On our own
client (`redis://`, `rediss://`, `unix://`) an operation is sent when it is called and
its answer awaited later, so the calls one request starts before it awaits any (its
admission: reserve, take a slot, look up and lock, and its first deployment's admit;
its end: settle, release, store, unlock) and those of concurrent requests go out in one
write: one round trip before the provider and one after. On a Cluster or through
Sentinel (coredis) each call is sent when awaited, one round trip each.

Where the state lives, under the configured prefix (`llm-proxy:` by default):

- a rate-limit bucket is a hash `{level, updated}`, the meter `MemoryStore` keeps, which
  expires when it would have drained to empty;
- the concurrency slots under a key are a sorted set of slot ids scored by when their
  lease lapses; lapsed ones are removed by the script that takes a slot, when the key
  seems full, and the set expires a little after its latest lease;
- a cache entry is a string (the chunk sequence as the cache middleware encoded it,
  msgspec msgpack) with the entry's TTL; a value larger than `cache_max_bytes` is not
  stored. There is no count bound here: every entry expires, and what Redis keeps meanwhile
  is bounded by its `maxmemory` with an eviction policy (`allkeys-lru` on a Redis used only
  by the proxy, or a separate Redis for the cache);
- a single-flight lock is a string holding its owner's token, `SET NX` with a short TTL,
  released only by its owner (a script compares the token); `cache_lookup` reads an
  entry and, on a miss, takes its lock in one script;
- a deployment's circuit is a hash `{open_until, probe, probe_expires, window}` and a
  sorted set of its failure times (`...:f`, trimmed to the window on every write). The
  hash lives a day past its last write: a circuit nobody asked about for that long is
  closed again. `admit` checks the circuit and reserves the deployment's buckets in one
  script; if it gets no answer in time nothing is undone (a probe's lease lapses, a
  bucket drains).

Every call is bounded by `timeout` and raises `StoreError` when Redis is unreachable,
answers too slowly or fails, so the middlewares apply their `on_error` policy; a request
never waits on a dead Redis longer than that. Calls that change state are shielded from
the caller's cancellation (within the same bound), so a caller always learns what it
holds. A call that timed out may still take effect when a stalled Redis resumes (it is
still in the socket), so the store undoes what it could not confirm, in the background:

- a slot lives in Redis for `slot_lease` seconds (5 by default), and the store renews the
  leases of every slot this process holds in one script call every `slot_lease / 3`
  seconds, for as long as the caller's `lease` allows. A slot whose acquisition timed out
  is not renewed, and the store also releases its id (retrying within `slot_lease`): a
  stall leaves no slot behind for longer than a few seconds, nor does a dead instance;
- a reservation carries an id, and a granted one leaves a record under it for
  `GRANT_RECORD` seconds. When the reservation times out the store voids the id (retrying
  for a minute, the rate-limit window): a grant that ran is refunded, and one that has not
  run yet will find the void and do nothing.

coredis
reconnects by itself: once Redis answers again, the next call succeeds. The client is held
open by a task of the store's own; if it cannot open (a Cluster with no node up) or fails
later, the store answers `StoreError` and opens a fresh client, after 0.1 s and then up to
every 5 s.

Waiting for a concurrency slot polls: `wait_for_slot` sleeps `slot_poll` seconds, and the
concurrency middleware cuts that short with its own backoff (50 ms, doubling to 1 s).
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import parse_qs, unquote, urlsplit

import structlog
import trio

from pipeline import ConfigError

from ._resp import Arg, CallTimeout, Pending, RespClient
from ._store import (
    Admission,
    Bucket,
    CircuitChange,
    CircuitPolicy,
    CircuitState,
    Reservation,
    StoreConfig,
    StoreError,
    bucket_state,
)

if TYPE_CHECKING:
    import coredis
    from coredis.connection import TCPLocation

    Client = RespClient | coredis.Redis[bytes] | coredis.RedisCluster[bytes]

__all__ = ["RedisStore", "RedisStoreStatistics"]

T = TypeVar("T")
log = structlog.get_logger("llm_proxy.store")

GRANT_RECORD = 10.0
"""Seconds Redis remembers a granted reservation, so that a late void can refund it."""
GRANT_RECORD_MS = round(GRANT_RECORD * 1000)
VOID_FOR = 60.0
"""Seconds the store keeps trying to void a reservation that timed out (one window)."""
MAX_UNCONFIRMED = 10_000
"""Most undo calls in flight; beyond it a slot is left to its lease, a grant to drain."""

RETRY_FIRST = 0.1
RETRY_MAX = 5.0
"""Seconds between attempts to open a client that failed (doubling from the first)."""

# Shared by the two bucket scripts. Numbers go back to Redis as strings with 17 digits:
# Redis would turn a Lua number into an integer (a reply) or 14 digits (an argument).
_BUCKETS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function fmt(x) return string.format('%.17g', x) end
local function drained(key, limit, window)
  local state = redis.call('HMGET', key, 'level', 'updated')
  if not state[1] then return 0 end
  -- A clock stepped back must not refill a bucket.
  local elapsed = math.max(0, now - tonumber(state[2]))
  return math.max(0, tonumber(state[1]) - elapsed * limit / window)
end
local function write(key, level, limit, window)
  if level <= 0 then
    redis.call('DEL', key)
    return
  end
  redis.call('HSET', key, 'level', fmt(level), 'updated', fmt(now))
  redis.call('PEXPIRE', key, math.ceil(level * window / limit * 1000) + 1000)
end
"""

_RESERVE = (
    _BUCKETS
    + """
-- KEYS: the buckets, then the reservation's record; ARGV: limit, window, amount of each
-- bucket in turn, then how long a grant's record is kept (ms). A record that says `void`
-- means the proxy gave up on this reservation before it ran: it does nothing.
local record = table.remove(KEYS)
local keep = table.remove(ARGV)
if redis.call('GET', record) == 'void' then return {0, '0', 'void'} end
local levels = {}
local wait = 0
for i, key in ipairs(KEYS) do
  local limit, window, amount = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local level = drained(key, limit, window)
  levels[i] = level
  local excess = level + amount - limit
  if excess > 0 then wait = math.max(wait, excess * window / limit) end
end
if wait == 0 then
  for i, key in ipairs(KEYS) do
    local limit, window, amount = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
    levels[i] = levels[i] + amount
    write(key, levels[i], limit, window)
  end
  redis.call('SET', record, 'granted', 'PX', keep)
end
local reply = {wait == 0 and 1 or 0, fmt(wait)}
for i, level in ipairs(levels) do reply[i + 2] = fmt(level) end
return reply
"""
)

_SETTLE = (
    _BUCKETS
    + """
-- KEYS: the buckets; ARGV: limit, window, signed amount of each bucket in turn.
for i, key in ipairs(KEYS) do
  local limit, window, amount = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  write(key, math.max(0, drained(key, limit, window) + amount), limit, window)
end
return 0
"""
)

_VOID = (
    _BUCKETS
    + """
-- KEYS: the buckets, then the reservation's record; ARGV: limit, window, amount of each
-- bucket in turn, then how long the record is kept (ms). Undo a reservation whose answer
-- the proxy never saw: refund it if it was granted, else make sure it never will be.
local record = table.remove(KEYS)
local keep = table.remove(ARGV)
local state = redis.call('GET', record)
if state == 'void' then return 0 end
redis.call('SET', record, 'void', 'PX', keep)
if state ~= 'granted' then return 0 end
for i, key in ipairs(KEYS) do
  local limit, window, amount = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  write(key, math.max(0, drained(key, limit, window) - amount), limit, window)
end
return 1
"""
)

_ACQUIRE = """
-- KEYS: the slot sets; ARGV: the slot id, the lease in seconds, then each key's most slots.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local slot, lease = ARGV[1], tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[i + 2])
  if redis.call('ZCARD', key) >= limit then
    -- Full, or holding leases that lapsed (their instance died): drop those and look again.
    redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.17g', now))
    if redis.call('ZCARD', key) >= limit then return 0 end
  end
end
local expires = string.format('%.17g', now + lease)
local ttl = math.ceil(lease * 1000) + 1000
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, expires, slot)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
return 1
"""

_RENEW = """
-- KEYS: slot sets; ARGV: the lease in seconds, then the slot held under each key in turn.
-- XX: a slot already released or lapsed is not brought back.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease = tonumber(ARGV[1])
local expires = string.format('%.17g', now + lease)
local ttl = math.ceil(lease * 1000) + 1000
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', expires, ARGV[i + 1])
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
return 0
"""

_RELEASE = """
for _, key in ipairs(KEYS) do redis.call('ZREM', key, ARGV[1]) end
return 0
"""

_LOCK = """
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
"""

_LOOKUP = """
-- KEYS: the entry, then (optionally) its lock; ARGV: the lock's token and TTL (ms).
-- The entry if there is one; else the lock is taken if asked and free: {false, 1 or 0}.
local value = redis.call('GET', KEYS[1])
if value then return {value} end
if #KEYS < 2 then return {false, 0} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {false, 1} end
return {false, 0}
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

_CIRCUIT = """
local function circuit_state(circuit)
  local ends = redis.call('HGET', circuit, 'open_until')
  if not ends then return 'closed', 0 end
  ends = tonumber(ends)
  if ends > now then return 'open', ends - now end
  return 'half_open', 0
end
local function keep(circuit)
  redis.call('PEXPIRE', circuit, 86400000)
end
"""

_ADMIT = (
    _BUCKETS
    + _CIRCUIT
    + """
-- KEYS: the circuit, then the buckets; ARGV: a probe token, the probe's lease (s), then
-- limit, window, amount of each bucket in turn.
local circuit = table.remove(KEYS, 1)
local token = table.remove(ARGV, 1)
local lease = tonumber(table.remove(ARGV, 1))
local state, left = circuit_state(circuit)
if state == 'open' then return {0, 'open', fmt(left)} end
if state == 'half_open' then
  local held = redis.call('HMGET', circuit, 'probe', 'probe_expires')
  if held[1] and tonumber(held[2]) > now then
    return {0, 'probing', fmt(tonumber(held[2]) - now)}
  end
end
local levels = {}
local wait = 0
for i, key in ipairs(KEYS) do
  local limit, window, amount = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  levels[i] = drained(key, limit, window)
  local excess = levels[i] + amount - limit
  if excess > 0 then wait = math.max(wait, excess * window / limit) end
end
if wait > 0 then return {0, 'rate_limited', fmt(wait)} end
for i, key in ipairs(KEYS) do
  local limit, window, amount = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  write(key, levels[i] + amount, limit, window)
end
if state == 'half_open' then
  redis.call('HSET', circuit, 'probe', token, 'probe_expires', fmt(now + lease))
  keep(circuit)
  return {1, token, '0'}
end
return {1, '', '0'}
"""
)

_RECORD = (
    _BUCKETS
    + _CIRCUIT
    + """
-- KEYS: the circuit, its failure set; ARGV: ok (1/0), probe token or '', failures,
-- window, cooldown, cool_for or '', closes (1/0), a unique member for this failure.
local circuit, fails = KEYS[1], KEYS[2]
local ok, token = ARGV[1] == '1', ARGV[2]
local failures, window, cooldown = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local before = circuit_state(circuit)
local probed = false
if token ~= '' and redis.call('HGET', circuit, 'probe') == token then
  probed = true
  redis.call('HDEL', circuit, 'probe', 'probe_expires')
end
if ok then
  if probed or ARGV[7] == '1' then
    redis.call('DEL', circuit, fails)
    return {before, 'closed', '0'}
  end
  local state, left = circuit_state(circuit)
  return {before, state, fmt(left)}
end
redis.call('ZREMRANGEBYSCORE', fails, '-inf', fmt(now - window))
redis.call('ZADD', fails, fmt(now), ARGV[8])
redis.call('PEXPIRE', fails, math.ceil(window * 1000) + 1000)
redis.call('HSET', circuit, 'window', fmt(window))
local rest = nil
if probed or (before == 'closed' and redis.call('ZCARD', fails) >= failures) then
  rest = cooldown
end
if ARGV[6] ~= '' then rest = math.max(rest or 0, tonumber(ARGV[6])) end
if rest then
  local ends = now + rest
  local current = redis.call('HGET', circuit, 'open_until')
  if (not current) or tonumber(current) <= now or ends > tonumber(current) then
    redis.call('HSET', circuit, 'open_until', fmt(ends))
  end
  redis.call('DEL', fails)
end
keep(circuit)
local state, left = circuit_state(circuit)
return {before, state, fmt(left)}
"""
)

_RELEASE_PROBE = """
if redis.call('HGET', KEYS[1], 'probe') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'probe', 'probe_expires')
end
return 0
"""

_CIRCUIT_STATES = (
    _BUCKETS
    + _CIRCUIT
    + """
-- KEYS: each circuit followed by its failure set. One reply per circuit:
-- state, failures within the window, cooldown left, whether a probe is out.
local reply = {}
for i = 1, #KEYS, 2 do
  local circuit, fails = KEYS[i], KEYS[i + 1]
  local state, left = circuit_state(circuit)
  local window = tonumber(redis.call('HGET', circuit, 'window') or '0')
  local count = redis.call('ZCOUNT', fails, '(' .. fmt(now - window), '+inf')
  local held = redis.call('HMGET', circuit, 'probe', 'probe_expires')
  local probing = (held[1] and tonumber(held[2]) > now) and 1 or 0
  reply[#reply + 1] = {state, count, fmt(left), probing}
end
return reply
"""
)

_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")


def _hosts(netloc: str, default_port: int) -> tuple[str | None, str | None, list[TCPLocation]]:
    """(username, password, nodes) from `user:password@host:port,host:port`."""
    # Imported here: coredis is loaded only for the modes that use it (Cluster, Sentinel).
    from coredis.connection import TCPLocation

    userinfo, _, hosts = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    nodes = []
    for host in hosts.split(","):
        name, port = host, default_port
        if host.startswith("["):
            name, _, rest = host[1:].partition("]")
            if rest.startswith(":"):
                port = int(rest[1:])
        elif ":" in host:
            name, _, number = host.rpartition(":")
            port = int(number)
        if not name:
            raise ValueError("a host is missing")
        nodes.append(TCPLocation(name, port))
    return username, password, nodes


def _redact(url: str) -> str:
    """The URL without its password and options, fit for logs and error messages."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":***"
    netloc = f"{userinfo}@{hosts}" if at else hosts
    return f"{parts.scheme}://{netloc}{parts.path}"


def _connect(url: str, timeout: float) -> tuple[Client, list[Any]]:
    """The client a URL names, and what must be entered (in order) before it is used.

    Raises:
      ValueError: the URL is malformed or its scheme is unknown.
    """
    # Imported here: a proxy on the memory store does not pay for loading coredis.
    import coredis
    from coredis.exceptions import ClusterDownError
    from coredis.retry import ConstantRetryPolicy, NoRetryPolicy

    parts = urlsplit(url)
    scheme = parts.scheme
    timeouts: dict[str, Any] = {
        "stream_timeout": timeout,
        "connect_timeout": timeout,
        "pool_timeout": timeout,
    }
    if scheme in ("redis", "rediss", "unix"):
        # Our own client: one shared connection, hiredis parsing, no hand-off between tasks.
        # It never retries: a script that may have run would apply twice; the store's
        # caller decides what a failure means instead.
        client: Client = RespClient(url, connect_timeout=timeout)
        return client, [client]
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    tls: dict[str, Any] = {name: query[name] for name in _TLS_OPTIONS if name in query}
    if "ssl_check_hostname" in query:
        tls["ssl_check_hostname"] = query["ssl_check_hostname"].lower() in ("1", "true", "yes")
    secure = scheme.startswith("rediss+")
    if scheme in ("redis+cluster", "rediss+cluster"):
        username, password, nodes = _hosts(parts.netloc, 6379)
        cluster: coredis.RedisCluster[bytes] = coredis.RedisCluster(
            startup_nodes=nodes,
            decode_responses=False,
            username=username,
            password=password,
            ssl=secure,
            retry_policy=ConstantRetryPolicy((ClusterDownError,), retries=2, delay=0.05),
            **tls,
            **timeouts,
        )
        return cluster, [cluster]
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        username, password, nodes = _hosts(parts.netloc, 26379)
        service, _, db = parts.path.strip("/").partition("/")
        if not service:
            raise ValueError("name the primary's service: redis+sentinel://HOST:PORT/SERVICE")
        sentinel: coredis.Sentinel[bytes] = coredis.Sentinel(
            nodes,
            sentinel_kwargs={"connect_timeout": timeout, "stream_timeout": timeout},
            retry_policy=NoRetryPolicy(),
        )
        # The primary's pool takes connection settings: a TLS context, not TLS options.
        primary = sentinel.primary_for(
            service,
            db=int(db or query.get("db", "0")),
            username=username,
            password=password,
            ssl_context=_tls_context(tls) if secure else None,
            stream_timeout=timeout,
            connect_timeout=timeout,
            timeout=timeout,
        )
        return primary, [sentinel, primary]
    raise ValueError(
        f"unknown scheme `{scheme}`: use redis://, rediss://, unix://, "
        "redis+cluster:// or redis+sentinel://"
    )


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """A TLS context from the URL's `ssl_*` options, as coredis reads them for `rediss://`."""
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if "ssl_certfile" in options:
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    if options.get("ssl_cert_reqs") == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif "ssl_check_hostname" in options:
        context.check_hostname = options["ssl_check_hostname"]
    return context


class _Unanswered(StoreError):
    """The call got no answer in time: Redis may still run it."""


class RedisStore:
    """The shared store: state in Redis, so many proxy instances enforce one set of limits.

    Open it before use and close it after (`async with store:`); `llm-proxy serve` does
    that around the server. Opening does not connect: a proxy whose Redis is down still
    starts, and its middlewares follow `on_error` until Redis answers.

    The URL names the server: `redis://[[user]:password@]host[:port][/db]`, `rediss://`
    (TLS), `unix:///path/to/redis.sock?db=0`, a Cluster as
    `redis+cluster://[[user]:password@]host:port[,host:port...]` (or `rediss+cluster://`),
    or a primary found through Sentinel as
    `redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]` (the
    credentials are the primary's). On a Cluster every key of one call must live in one
    hash slot, so the prefix must carry a hash tag: `{llm-proxy}:`.

    Args:
      url: where Redis is.
      prefix: put in front of every key, so several proxies (or other users) share a Redis.
      timeout: seconds one call may take, connecting included, before it fails (on our
        own client up to a quarter more: its watchdog checks a few times per timeout).
      cache_max_bytes: a cache value larger than this is not stored.
      slot_poll: seconds `wait_for_slot` sleeps (the concurrency middleware's backoff
        usually wakes it sooner).
      slot_lease: seconds a slot lasts in Redis unless this store renews it; the most a
        stall or a dead instance keeps a slot taken.

    Raises:
      ConfigError: the URL is malformed, or a Cluster's prefix has no hash tag.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "llm-proxy:",
        timeout: float = 1.0,
        cache_max_bytes: int = 64 * 1024 * 1024,
        slot_poll: float = 1.0,
        slot_lease: float = 5.0,
    ) -> None:
        self.location = _redact(url)
        self._url = url  # with its password: never logged
        try:
            client, contexts = _connect(url, timeout)
        except ValueError as exc:
            raise ConfigError(f"store url `{self.location}`: {exc}", param="store.url") from None
        if _is_cluster(client) and not _has_hash_tag(prefix):
            raise ConfigError(
                f"store prefix `{prefix}`: on a Redis Cluster the prefix needs a hash tag so "
                'that the keys of one call share a slot, e.g. "{llm-proxy}:"',
                param="store.prefix",
            )
        self.prefix = prefix
        self.timeout = timeout
        self.cache_max_bytes = cache_max_bytes
        self.slot_poll = slot_poll
        self.slot_lease = slot_lease
        self._use(client, contexts)
        self._stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None
        self._unavailable: str | None = None
        # The slots this process holds: id -> (prefixed keys, when renewing stops).
        self._held: dict[str, tuple[list[str], float]] = {}
        self._unconfirmed = 0
        self._renewal_failing = False
        self._id_prefix = secrets.token_hex(8) + ":"
        self._ids = 0

    def _use(self, client: Client, contexts: list[Any]) -> None:
        """Talk to Redis through `client` (its scripts are registered with it)."""
        self.client = client
        self._contexts = contexts
        # Our own client sends a call when it is made, and those made together share a
        # write (see `Store`); coredis sends each when it is awaited.
        self.batches_calls = isinstance(client, RespClient)
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)
        self._void = client.register_script(_VOID)
        self._unlock = client.register_script(_UNLOCK)
        self._lock = client.register_script(_LOCK)
        self._lookup = client.register_script(_LOOKUP)
        self._admit = client.register_script(_ADMIT)
        self._record = client.register_script(_RECORD)
        self._release_probe = client.register_script(_RELEASE_PROBE)
        self._circuit_states = client.register_script(_CIRCUIT_STATES)

    @classmethod
    def from_config(cls, store: StoreConfig, *, cache_max_bytes: int | None = None) -> RedisStore:
        """A Redis store as the `[store]` section says.

        Args:
          store: the section.
          cache_max_bytes: the largest cached answer to keep (the cache's own bound, which
            the application hands over from `[cache]`); the store's default when None.
        """
        if cache_max_bytes is None:
            return cls(store.url, prefix=store.prefix, timeout=store.timeout)
        return cls(
            store.url, prefix=store.prefix, timeout=store.timeout, cache_max_bytes=cache_max_bytes
        )

    def __repr__(self) -> str:
        return f"RedisStore({self.location!r}, prefix={self.prefix!r})"

    async def __aenter__(self) -> RedisStore:
        if self._stack is not None:
            raise RuntimeError(f"{self!r} is already open")
        stack = AsyncExitStack()
        async with stack:
            nursery = await stack.enter_async_context(trio.open_nursery())
            stack.callback(nursery.cancel_scope.cancel)
            await nursery.start(self._keep_open)
            nursery.start_soon(self._renew_leases)
            self._nursery = nursery
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        self._nursery = None
        self._held.clear()
        if stack is not None:
            await stack.aclose()

    async def _keep_open(self, task_status: trio.TaskStatus[None]) -> None:
        """Hold the client open until the store closes, opening a new one if it fails.

        A plain Redis client opens without connecting; a Cluster client must reach a node
        to open, and a client whose background work fails is done for. Either way the
        store answers `StoreError` meanwhile, and tries again with a fresh client, after
        0.1 s and then up to every 5 s.
        """
        delay = RETRY_FIRST
        started = False
        while True:
            try:
                async with AsyncExitStack() as contexts:
                    for context in self._contexts:
                        await contexts.enter_async_context(context)
                    if self._unavailable is not None:
                        log.info("store_reopened", store=self.location)
                    self._unavailable = None
                    delay = RETRY_FIRST
                    if not started:
                        started = True
                        task_status.started()
                    await trio.sleep_forever()
            except Exception as exc:
                if self._unavailable is None:
                    log.warning(
                        "store_unavailable",
                        store=self.location,
                        error=f"{type(exc).__name__}: {exc}",
                        retry_in=delay,
                    )
                self._unavailable = f"{type(exc).__name__}: {exc}"
            if not started:
                started = True
                task_status.started()
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
            self._use(*_connect(self._url, self.timeout))

    async def ping(self) -> None:
        """Check that Redis answers.

        Raises:
          StoreError: it does not, within the timeout.
        """
        await self._call("ping", self.client.ping, shield=False)

    def _call(
        self, operation: str, send: Callable[..., Awaitable[T]], *args: Any, shield: bool
    ) -> Awaitable[T]:
        """Send one Redis call now (`send(*args)`); the awaitable returned waits for its answer.

        The answer is awaited within `timeout`, shielded from cancellation if `shield`.
        Sending at once (our own client queues the command when `send` is called) lets a
        caller start several calls before it waits for any, and have them written together.

        Raises:
          StoreError: Redis failed or did not answer in time.
          RuntimeError: the store is not open.
        """
        if self._stack is None:
            raise RuntimeError(f"{self!r} is not open: use `async with store:`")
        if self._unavailable is not None:
            raise StoreError(
                f"Redis at {self.location}: {operation} failed: cannot open the client: "
                f"{self._unavailable}"
            )
        return self._answer(operation, send(*args), shield)

    async def _answer(self, operation: str, pending: Awaitable[T], shield: bool) -> T:
        if isinstance(pending, Pending):
            # Our client bounds the wait itself, without a cancel scope (see `_resp`).
            try:
                if pending.ready:  # read already, with the others of its write
                    return await pending
                return cast(T, await pending.within(self.timeout, shield))
            except CallTimeout:
                raise self._late(operation) from None
            except Exception as exc:
                raise StoreError(
                    f"Redis at {self.location}: {operation} failed: {type(exc).__name__}: {exc}"
                ) from exc
        with trio.CancelScope(deadline=trio.current_time() + self.timeout, shield=shield):
            try:
                return await pending
            except Exception as exc:
                # A client's own read timeout equals ours: whichever fires, Redis may run it.
                error = _Unanswered if isinstance(exc, TimeoutError) else StoreError
                raise error(
                    f"Redis at {self.location}: {operation} failed: {type(exc).__name__}: {exc}"
                ) from exc
        raise self._late(operation)

    def _late(self, operation: str) -> _Unanswered:
        return _Unanswered(
            f"Redis at {self.location}: {operation} got no answer within {self.timeout:g} s"
        )

    # -- rate limits -----------------------------------------------------------------------

    def _new_id(self) -> str:
        """A new id for a reservation, slot, lock or probe, unique across instances.

        Ids guard nothing (whoever reaches the Redis can do anything): a random part per
        store and a counter make them unique without a system call each.
        """
        self._ids += 1
        return f"{self._id_prefix}{self._ids:x}"

    def _bucket_args(self, buckets: Sequence[Bucket]) -> tuple[list[str], list[Arg]]:
        prefix = self.prefix
        keys = [prefix + b.key for b in buckets]
        args: list[Arg] = []
        for b in buckets:
            args += (b.limit, _seconds(b.window), b.amount)
        return keys, args

    def reserve(self, buckets: Sequence[Bucket]) -> Awaitable[Reservation]:
        keys, args = self._bucket_args(buckets)
        keys.append(f"{self.prefix}rl:res:{self._new_id()}")
        args.append(GRANT_RECORD_MS)
        return self._reservation(
            self._call("reserve", self._reserve, keys, args, shield=True),
            buckets,
            keys,
            args,
        )

    async def _reservation(
        self, pending: Awaitable[Any], buckets: Sequence[Bucket], keys: list[str], args: list[Arg]
    ) -> Reservation:
        try:
            reply = await pending
        except _Unanswered:
            self._undo("void", self._void, keys, args, VOID_FOR)
            raise
        granted, wait, *levels = reply
        states = tuple(
            [bucket_state(b, float(level)) for b, level in zip(buckets, levels, strict=True)]
        )
        return Reservation(granted == 1, float(wait), states)

    def settle(self, buckets: Sequence[Bucket]) -> Awaitable[object]:
        keys, args = self._bucket_args(buckets)
        return self._call("settle", lambda: self._settle(keys, args), shield=True)

    # -- concurrency slots -----------------------------------------------------------------

    def acquire_slots(self, limits: Mapping[str, int], lease: float) -> Awaitable[str | None]:
        slot = self._new_id()
        prefix = self.prefix
        keys = [prefix + key for key in limits]
        first = min(lease, self.slot_lease)
        args: list[Arg] = [slot, _seconds(first), *limits.values()]
        pending = self._call("acquire", self._acquire, keys, args, shield=True)
        return self._slot(pending, slot, keys, lease if lease > first else None)

    async def _slot(
        self, pending: Awaitable[Any], slot: str, keys: list[str], lease: float | None
    ) -> str | None:
        until = trio.current_time() + lease if lease is not None else 0.0
        try:
            taken = await pending
        except _Unanswered:
            self._undo("release", self._release, keys, [slot], self.slot_lease)
            raise
        if taken != 1:
            return None
        if lease is not None:
            self._held[slot] = (keys, until)
        return slot

    def release_slots(self, keys: Sequence[str], slot: str) -> Awaitable[object]:
        self._held.pop(slot, None)  # first: a renewal must not outlive the release
        names = [self.prefix + key for key in keys]
        return self._call("release", lambda: self._release(names, [slot]), shield=True)

    async def _renew_leases(self) -> None:
        """Every `slot_lease / 3` seconds, renew the lease of every slot still held."""
        while True:
            await trio.sleep(self.slot_lease / 3)
            now = trio.current_time()
            for slot in [s for s, (_, until) in self._held.items() if until <= now]:
                del self._held[slot]  # its caller's lease is over: let it lapse
            if not self._held:
                continue
            keys: list[str] = []
            args = [repr(float(self.slot_lease))]
            for slot, (names, _) in self._held.items():
                keys += names
                args += [slot] * len(names)
            try:
                await self._call("renew", self._renew, keys, args, shield=False)
            except StoreError as exc:
                if not self._renewal_failing:
                    log.warning("store_renewal_failed", store=self.location, error=str(exc))
                self._renewal_failing = True
            else:
                self._renewal_failing = False

    def _undo(
        self,
        operation: str,
        script: Callable[[list[str], list[Arg]], Awaitable[Any]],
        keys: list[str],
        args: list[Arg],
        within: float,
    ) -> None:
        """Undo a call that may still run, in the background, retrying for `within` s."""
        if self._nursery is None or self._unconfirmed >= MAX_UNCONFIRMED:
            return
        self._unconfirmed += 1
        self._nursery.start_soon(self._undo_until_answered, operation, script, keys, args, within)

    async def _undo_until_answered(
        self,
        operation: str,
        script: Callable[[list[str], list[Arg]], Awaitable[Any]],
        keys: list[str],
        args: list[Arg],
        within: float,
    ) -> None:
        try:
            give_up = trio.current_time() + within
            while trio.current_time() < give_up:
                try:
                    await self._call(operation, lambda: script(keys, args), shield=False)
                    return
                except StoreError:
                    await trio.sleep(min(self.timeout, max(0.0, give_up - trio.current_time())))
            log.warning("store_undo_gave_up", store=self.location, operation=operation)
        finally:
            self._unconfirmed -= 1

    async def wait_for_slot(self, keys: Sequence[str]) -> None:
        await trio.sleep(self.slot_poll)

    # -- cache -----------------------------------------------------------------------------

    async def cache_get(self, key: str) -> bytes | None:
        return await self._call(
            "cache read", lambda: self.client.get(self.prefix + key), shield=False
        )

    def cache_set(self, key: str, value: bytes, ttl: float) -> Awaitable[object]:
        name = self.prefix + key
        if len(value) > self.cache_max_bytes:
            # Like the memory store: a value too large to keep replaces nothing stale.
            return self._call("cache write", lambda: self.client.delete([name]), shield=True)
        return self._call(
            "cache write", lambda: self.client.set(name, value, px=_millis(ttl)), shield=True
        )

    # -- locks -----------------------------------------------------------------------------

    def cache_lookup(
        self, key: str, lock: str | None, ttl: float
    ) -> Awaitable[tuple[bytes | None, str | None]]:
        token = self._new_id()
        keys = [self.prefix + key]
        args: list[Arg] = []
        if lock is not None:
            keys.append(self.prefix + lock)
            args += (token, _millis(ttl))
        pending = self._call("cache read", self._lookup, keys, args, shield=True)
        return self._looked_up(pending, token)

    async def _looked_up(
        self, pending: Awaitable[Any], token: str
    ) -> tuple[bytes | None, str | None]:
        reply = await pending
        if reply[0] is not None:
            return reply[0], None
        return None, token if reply[1] == 1 else None

    async def try_lock(self, key: str, ttl: float) -> str | None:
        token = self._new_id()
        taken = await self._call(
            "lock",
            lambda: self._lock([self.prefix + key], [token, str(_millis(ttl))]),
            shield=True,
        )
        return token if taken else None

    def unlock(self, key: str, token: str) -> Awaitable[object]:
        return self._call("unlock", lambda: self._unlock([self.prefix + key], [token]), shield=True)

    # -- circuit breakers ------------------------------------------------------------------

    def admit(
        self, circuit: str, buckets: Sequence[Bucket], probe_lease: float
    ) -> Awaitable[Admission]:
        keys, args = self._bucket_args(buckets)
        keys.insert(0, self.prefix + circuit)
        args[:0] = [self._new_id(), _seconds(probe_lease)]
        return self._admission(self._call("admit", self._admit, keys, args, shield=True))

    async def _admission(self, pending: Awaitable[Any]) -> Admission:
        admitted, what, wait = await pending
        what = what.decode() if isinstance(what, bytes) else str(what)
        if admitted == 1:
            return Admission(True, probe=what or None)
        refused: Any = what
        return Admission(False, refused=refused, retry_after=float(wait))

    async def record(
        self,
        circuit: str,
        ok: bool,
        policy: CircuitPolicy,
        *,
        probe: str | None = None,
        cool_for: float | None = None,
        closes: bool = False,
    ) -> CircuitChange:
        name = self.prefix + circuit
        keys = [name, name + ":f"]
        args = [
            "1" if ok else "0",
            probe or "",
            str(policy.failures),
            repr(float(policy.window)),
            repr(float(policy.cooldown)),
            "" if cool_for is None else repr(float(cool_for)),
            "1" if closes else "0",
            self._new_id(),
        ]
        reply: Any = await self._call("record", lambda: self._record(keys, args), shield=True)
        before, after, left = (_text(part) for part in reply)
        return CircuitChange(before, after, float(left))  # type: ignore[arg-type]

    async def release_probe(self, circuit: str, probe: str) -> None:
        keys = [self.prefix + circuit]
        await self._call("release probe", lambda: self._release_probe(keys, [probe]), shield=True)

    async def circuit_states(self, circuits: Sequence[str]) -> list[CircuitState]:
        if not circuits:
            return []
        keys = []
        for circuit in circuits:
            keys += [self.prefix + circuit, self.prefix + circuit + ":f"]
        reply: Any = await self._call(
            "circuit states", lambda: self._circuit_states(keys, []), shield=False
        )
        return [
            CircuitState(_text(state), int(count), float(left), probing == 1)  # type: ignore[arg-type]
            for state, count, left, probing in reply
        ]

    def statistics(self) -> RedisStoreStatistics:
        """What this process knows of the store (the limits, slots and entries are in Redis)."""
        client = self.client
        resp = client.statistics() if isinstance(client, RespClient) else None
        return RedisStoreStatistics(
            open=self._stack is not None,
            unavailable=self._unavailable,
            slots=len(self._held),
            unconfirmed=self._unconfirmed,
            commands=resp.commands if resp is not None else 0,
            writes=resp.writes if resp is not None else 0,
        )


@dataclass(frozen=True)
class RedisStoreStatistics:
    """What `RedisStore.statistics()` returns.

    Attributes:
      open: whether the store is open (inside `async with store:`).
      unavailable: why the client cannot be opened now, or None when it is open.
      slots: concurrency slots this process holds, whose short leases it renews.
      unconfirmed: calls that got no answer in time and whose possible effect the store is
        still undoing.
      commands: Redis commands sent through the current client (`redis://`, `rediss://`,
        `unix://`; 0 on a Cluster or through Sentinel).
      writes: the writes, each one round trip, that carried those commands: commands
        started together (by one request or by concurrent ones) share one.
    """

    open: bool
    unavailable: str | None
    slots: int
    unconfirmed: int
    commands: int = 0
    writes: int = 0


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _is_cluster(client: Client) -> bool:
    # Imported here: coredis is loaded only for the modes that use it (Cluster, Sentinel).
    from coredis import RedisCluster

    return isinstance(client, RedisCluster)


def _seconds(seconds: float) -> str:
    """A duration as a script argument: every digit of the float (cached: a few distinct)."""
    text = _SECONDS.get(seconds)
    if text is None:
        text = repr(float(seconds))
        if len(_SECONDS) < 1024:
            _SECONDS[seconds] = text
    return text


_SECONDS: dict[float, str] = {}


def _millis(seconds: float) -> int:
    """A TTL in whole milliseconds, at least one (Redis refuses 0)."""
    return max(1, round(seconds * 1000))


def _has_hash_tag(prefix: str) -> bool:
    """Whether Redis Cluster hashes only part of the key: a non-empty `{...}`."""
    start = prefix.find("{")
    return start >= 0 and prefix.find("}", start + 1) > start + 1
