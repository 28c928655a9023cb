"""RedisStore on its own: failures within its timeout, reconnection, URLs, Cluster, Sentinel."""

from __future__ import annotations

import itertools
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import coredis
import pytest
import trio

from benchmarks.redis_server import STARTUP, RedisServer, command, free_port
from middlewares import Bucket, RedisStore, RedisStoreStatistics, StoreConfig, StoreError
from pipeline import ConfigError

from .conftest import redis_binary

TIMEOUT = 0.3
BOUND = 5.0
"""Seconds within which a failing call must have returned; only a hang would reach it."""


def operations(store: RedisStore) -> dict[str, Callable[[], Awaitable[object]]]:
    """One call of each kind the middlewares make."""
    bucket = Bucket("rl:req:key:a", 10, 60.0, 1)
    return {
        "reserve": lambda: store.reserve([bucket]),
        "settle": lambda: store.settle([bucket]),
        "acquire": lambda: store.acquire_slots({"cc:global": 2}, 60),
        "release": lambda: store.release_slots(["cc:global"], "slot"),
        "cache read": lambda: store.cache_get("cache:v1:x"),
        "cache write": lambda: store.cache_set("cache:v1:x", b"v", 60),
        "lock": lambda: store.try_lock("lock:cache:v1:x", 5),
        "unlock": lambda: store.unlock("lock:cache:v1:x", "token"),
    }


async def test_every_call_fails_at_once_while_redis_is_down_and_works_when_it_is_back(
    redis: RedisServer,
) -> None:
    async with RedisStore(redis.url, timeout=TIMEOUT) as store:
        assert (await store.reserve([Bucket("k", 1, 60.0, 1)])).granted
        redis.stop()
        for name, call in operations(store).items():
            with trio.fail_after(BOUND), pytest.raises(StoreError, match=f"{name} failed"):
                await call()
        redis.start()
        # A fresh Redis: the scripts are loaded again, and the state starts empty.
        for call in operations(store).values():
            await call()
        assert (await store.reserve([Bucket("k", 1, 60.0, 1)])).granted


async def test_a_redis_that_stops_answering_fails_each_call_within_the_timeout(
    redis: RedisServer,
) -> None:
    async with RedisStore(redis.url, timeout=TIMEOUT) as store:
        await store.ping()
        redis.pause()
        try:
            for name, call in operations(store).items():
                with trio.fail_after(BOUND), pytest.raises(StoreError, match=f"{name} got no"):
                    await call()
            # A shielded call ignores the caller's cancellation, but not its own timeout.
            with trio.fail_after(BOUND), trio.CancelScope() as scope:
                scope.cancel()
                with pytest.raises(StoreError, match=r"no answer within 0\.3 s"):
                    await store.settle([Bucket("k", 1, 60.0, -1)])
        finally:
            redis.resume()
        with trio.fail_after(BOUND):
            while True:
                try:
                    await store.ping()
                    break
                except StoreError:
                    await trio.sleep(0.05)
        assert await store.acquire_slots({"s": 1}, 60) is not None


async def test_a_store_must_be_open() -> None:
    store = RedisStore("redis://127.0.0.1:1/0")
    assert store.statistics() == RedisStoreStatistics(
        open=False, unavailable=None, slots=0, unconfirmed=0
    )
    with pytest.raises(RuntimeError, match="is not open"):
        await store.cache_get("x")
    async with store:
        assert store.statistics().open
        with pytest.raises(RuntimeError, match="already open"):
            await store.__aenter__()
    assert not store.statistics().open


async def test_keys_carry_the_prefix_so_proxies_can_share_one_redis(redis: RedisServer) -> None:
    async with (
        RedisStore(redis.url, prefix="a:") as first,
        RedisStore(redis.url, prefix="b:") as second,
    ):
        assert (await first.reserve([Bucket("rl:req:global", 1, 60.0, 1)])).granted
        assert (await second.reserve([Bucket("rl:req:global", 1, 60.0, 1)])).granted
        assert await first.acquire_slots({"cc:global": 1}, 60) is not None
        await second.cache_set("cache:v1:x", b"v", 60)
        assert await first.try_lock("lock:x", 60) is not None
    names = redis.key_names()
    # A granted reservation leaves a short-lived record under its id (for a late void).
    records = [name for name in names if ":rl:res:" in name]
    assert [name.partition("rl:res:")[0] for name in records] == ["a:", "b:"]
    assert [name for name in names if name not in records] == [
        "a:cc:global",
        "a:lock:x",
        "a:rl:req:global",
        "b:cache:v1:x",
        "b:rl:req:global",
    ]


async def test_every_key_expires_and_an_empty_bucket_is_removed(redis: RedisServer) -> None:
    async with RedisStore(redis.url, prefix="") as store:
        await store.reserve([Bucket("b", 10, 60.0, 5)])
        await store.acquire_slots({"s": 1}, 30)
        await store.cache_set("c", b"v", 20)
        await store.try_lock("l", 10)
        ttls = {key: int(command(redis.port, "PTTL", key)[1:-2]) for key in "bscl"}
        assert 30_000 < ttls["b"] <= 31_000  # 5 of 10 per minute drain in 30 s
        # A slot lives in Redis for the store's slot lease, renewed while it is held.
        assert 5_000 < ttls["s"] <= 6_000
        (record,) = [name for name in redis.key_names() if name.startswith("rl:res:")]
        assert 9_000 < int(command(redis.port, "PTTL", record)[1:-2]) <= 10_000
        assert 19_000 < ttls["c"] <= 20_000
        assert 9_000 < ttls["l"] <= 10_000
        await store.settle([Bucket("b", 10, 60.0, -5)])
    assert "b" not in redis.key_names()


def test_urls_name_the_client_and_never_show_the_password() -> None:
    plain = RedisStore("redis://:s3cret@cache.internal:6380/2")
    assert type(plain.client) is coredis.Redis
    assert repr(plain) == "RedisStore('redis://:***@cache.internal:6380/2', prefix='llm-proxy:')"
    secure = RedisStore("rediss://user:s3cret@cache.internal/0?ssl_cert_reqs=none")
    assert secure.location == "rediss://user:***@cache.internal/0"
    socket = RedisStore("unix:///run/redis/redis.sock?db=1")
    assert type(socket.client) is coredis.Redis
    assert socket.location == "unix:///run/redis/redis.sock"
    cluster = RedisStore("redis+cluster://:s3cret@a:7000,b:7001,[::1]:7002", prefix="{p}:")
    assert type(cluster.client) is coredis.RedisCluster
    assert "s3cret" not in repr(cluster)
    sentinel = RedisStore("redis+sentinel://s1:26379,s2/mymaster/3")
    assert type(sentinel.client) is coredis.Redis
    assert "Sentinel" in type(sentinel.client.connection_pool).__name__


@pytest.mark.parametrize(
    ("url", "prefix", "message"),
    [
        ("memcached://host", "p:", "unknown scheme `memcached`"),
        ("redis+sentinel://s1:26379", "p:", "name the primary's service"),
        ("redis+cluster://a:x", "p:", "store url `redis\\+cluster://a:x`"),
        ("redis+cluster://a:7000", "llm-proxy:", "needs a hash tag"),
        ("redis+cluster://a:7000", "{}:", "needs a hash tag"),
    ],
)
def test_a_bad_url_or_prefix_is_a_config_error(url: str, prefix: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RedisStore(url, prefix=prefix)


def test_from_config_takes_the_store_section_and_the_cache_bound() -> None:
    store = RedisStore.from_config(
        StoreConfig(backend="redis", url="redis://h:1/0", prefix="x:", timeout=0.25),
        cache_max_bytes=1000,
    )
    assert (store.location, store.prefix, store.timeout, store.cache_max_bytes) == (
        "redis://h:1/0",
        "x:",
        0.25,
        1000,
    )


async def test_a_wrong_password_is_a_store_error_that_does_not_repeat_it(tmp_path: Path) -> None:
    server = RedisServer(redis_binary(), tmp_path / "auth", "--requirepass", "right-one")
    server.start()
    try:
        url = f"redis://:wrong-one@127.0.0.1:{server.port}/0"
        async with RedisStore(url, timeout=TIMEOUT) as store:
            with pytest.raises(
                StoreError, match=r"redis://:\*\*\*@127\.0\.0\.1:\d+/0: ping failed"
            ) as info:
                await store.ping()
        assert "wrong-one" not in str(info.value)
        right = f"redis://:right-one@127.0.0.1:{server.port}/0"
        async with RedisStore(right, timeout=TIMEOUT) as store:
            await store.ping()
    finally:
        server.stop()


# -- a Cluster and a Sentinel, as far as one machine can run them --------------------------


class ClusterServer(RedisServer):
    """A one-node Redis Cluster that serves every slot once started."""

    def __init__(self, directory: Path) -> None:
        config = directory / "nodes.conf"
        # The bus port is the client port + 10000 unless given: past 65535 for a high port.
        bus = ["--cluster-port", str(free_port())]
        options = ["--cluster-enabled", "yes", "--cluster-config-file", str(config), *bus]
        super().__init__(redis_binary(), directory, *options)

    def start(self) -> None:
        super().start()
        command(self.port, "CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        give_up = time.monotonic() + STARTUP
        while b"cluster_state:ok" not in command(self.port, "CLUSTER", "INFO"):
            assert time.monotonic() < give_up, "the cluster did not come up"
            time.sleep(0.02)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterServer]:
    server = ClusterServer(tmp_path / "cluster")
    try:
        yield server
    finally:
        server.stop()


async def test_a_cluster_runs_every_operation_with_a_tagged_prefix(
    cluster: ClusterServer,
) -> None:
    cluster.start()
    url = f"redis+cluster://127.0.0.1:{cluster.port}"
    async with RedisStore(url, prefix="{proxy}:", timeout=1.0) as store:
        for call in operations(store).values():
            await call()
        both = [Bucket("rl:req:key:a", 1, 60.0, 1), Bucket("rl:req:global", 5, 60.0, 1)]
        assert not (await store.reserve(both)).granted  # the key's one request went above


async def test_a_store_opened_while_its_cluster_is_down_works_once_it_is_up(
    cluster: ClusterServer,
) -> None:
    url = f"redis+cluster://127.0.0.1:{cluster.port}"
    async with RedisStore(url, prefix="{proxy}:", timeout=0.5) as store:
        with pytest.raises(StoreError, match="cannot open the client: RedisClusterError"):
            await store.cache_get("x")
        cluster.start()
        with trio.fail_after(BOUND * 2):
            for _ in itertools.count():
                try:
                    await store.cache_set("x", b"v", 60)
                    break
                except StoreError:
                    await trio.sleep(0.1)
        assert await store.cache_get("x") == b"v"


@pytest.fixture
def sentinel(redis: RedisServer, tmp_path: Path) -> Iterator[int]:
    """A Sentinel watching the test's Redis as the primary `mymaster`; yields its port."""
    config = tmp_path / "sentinel.conf"
    config.write_text(f"sentinel monitor mymaster 127.0.0.1 {redis.port} 1\n")
    port = free_port()
    process = subprocess.Popen(
        [redis_binary(), str(config), "--sentinel", "--port", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        give_up = time.monotonic() + STARTUP
        while True:
            try:
                if b"127.0.0.1" in command(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"):
                    break
            except OSError:
                pass
            assert time.monotonic() < give_up, "the sentinel did not come up"
            time.sleep(0.02)
        yield port
    finally:
        process.kill()
        process.wait(timeout=STARTUP)


async def test_a_sentinel_leads_the_store_to_its_primary(redis: RedisServer, sentinel: int) -> None:
    url = f"redis+sentinel://127.0.0.1:{sentinel}/mymaster"
    async with RedisStore(url, prefix="s:", timeout=1.0) as store:
        assert (await store.reserve([Bucket("rl:req:global", 1, 60.0, 1)])).granted
    names = redis.key_names()
    assert "s:rl:req:global" in names
    assert all(name.startswith("s:") for name in names)
