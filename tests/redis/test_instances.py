"""Two proxy server processes sharing one Redis act as one proxy.

Both run `llm-proxy serve` on the example configuration for several instances
(`examples/several-instances.toml`), pointed at the test's Redis; instance A fails open
when Redis is away, instance B fails closed. The processes live for the whole module; the
test that stops Redis comes last, since Redis comes back empty.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import httpx
import pytest
import trio

from benchmarks.redis_server import RedisServer

from .conftest import (
    EXAMPLE,
    KEYS,
    ROOT,
    TEST_KEYS,
    WAIT,
    Proxy,
    chat,
    example_config,
    redis_binary,
)


class Instances:
    def __init__(self, redis: RedisServer, a: Proxy, b: Proxy) -> None:
        self.redis = redis
        self.a, self.b = a, b
        self.urls = [a.url(), b.url()]


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instances]:
    directory = tmp_path_factory.mktemp("instances")
    redis = RedisServer(redis_binary(), directory / "redis")
    redis.start()
    proxies: list[Proxy] = []
    try:
        for name, on_error in (("a", "fail_open"), ("b", "fail_closed")):
            config = directory / f"{name}.toml"
            config.write_text(example_config(redis.url, on_error=on_error, extra=TEST_KEYS))
            proxies.append(Proxy(config, env={"TEAM_A_KEY": KEYS["team-a"]}))
        yield Instances(redis, *proxies)
    finally:
        for proxy in proxies:
            proxy.kill()
        redis.stop()


async def test_a_key_limited_to_10_a_minute_gets_exactly_10_of_60_over_both(
    instances: Instances,
) -> None:
    statuses: list[int] = []
    rejected: list[httpx.Response] = []

    async def one(http: httpx.AsyncClient, i: int) -> None:
        response = await chat(http, instances.urls[i % 2], "ten", f"request {i}")
        statuses.append(response.status_code)
        if response.status_code == 429:
            rejected.append(response)

    with trio.fail_after(WAIT):
        async with httpx.AsyncClient(timeout=WAIT) as http, trio.open_nursery() as nursery:
            for i in range(60):
                nursery.start_soon(one, http, i)
    assert statuses.count(200) == 10
    assert statuses.count(429) == 50
    for response in rejected:
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]["type"] == "rate_limit_error"


async def test_an_answer_cached_through_a_is_a_hit_on_b(instances: Instances) -> None:
    async with httpx.AsyncClient(timeout=WAIT) as http:
        first = await chat(http, instances.urls[0], "team-a", "cache me")
        second = await chat(http, instances.urls[1], "team-a", "cache me")
    assert (first.status_code, first.headers["x-cache"]) == (200, "miss")
    assert (second.status_code, second.headers["x-cache"]) == (200, "hit")
    assert second.json()["choices"] == first.json()["choices"]


async def test_a_token_limit_settles_with_real_usage_across_instances(
    instances: Instances,
) -> None:
    async with httpx.AsyncClient(timeout=WAIT) as http:
        first = await chat(http, instances.urls[0], "tokens", "count me", max_tokens=300)
        second = await chat(http, instances.urls[1], "tokens", "count me too", max_tokens=300)
    used = first.json()["usage"]["total_tokens"]
    estimate = first.json()["usage"]["prompt_tokens"] + 300
    assert used < estimate
    assert int(first.headers["x-ratelimit-remaining-tokens"]) == 1000 - estimate
    # B saw what A was finally charged: its real usage, not its estimate (plus what drained
    # meanwhile, about 17 tokens a second).
    charged = used + second.json()["usage"]["prompt_tokens"] + 300
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    assert 1000 - charged <= remaining <= 1000 - charged + 60


async def test_with_redis_stopped_each_follows_on_error_and_limits_hold_once_it_is_back(
    instances: Instances,
) -> None:
    a, b = instances.urls
    async with httpx.AsyncClient(timeout=WAIT) as http:
        instances.redis.stop()
        with trio.fail_after(WAIT):
            opened = [await chat(http, a, "after", f"open {i}") for i in range(12)]
            closed = await chat(http, b, "after", "closed")
        assert [r.status_code for r in opened] == [200] * 12  # beyond the limit: admitted
        assert closed.status_code == 503
        assert int(closed.headers["retry-after"]) >= 1
        assert instances.a.process.poll() is None
        assert instances.b.process.poll() is None
        ops = {"authorization": f"Bearer {KEYS['ops']}"}
        metrics = (await http.get(f"{a}/metrics", headers=ops)).text
        assert re.search(
            r'store_errors_total\{middleware="rate limiter",policy="fail_open"\} 12', metrics
        )

        instances.redis.start()
        with trio.fail_after(WAIT):
            for attempt in itertools.count():
                if (await chat(http, b, "team-a", f"back? {attempt}")).status_code == 200:
                    break
                await trio.sleep(0.1)
            statuses = [
                (await chat(http, (a, b)[i % 2], "after", f"{i}")).status_code for i in range(12)
            ]
    assert statuses == [200] * 10 + [429] * 2
    a_log, b_log = instances.a.log(), instances.b.log()
    errors = '"store_errors":["rate limiter","concurrency limiter","cache","deployments"]'
    assert a_log.count(errors) == 12
    # Logged once per interval, not once per request; and the recovery too.
    assert a_log.count('"operation":"reserve","policy":"fail_open"') == 1
    assert a_log.count('"event":"store_recovered"') == 4
    refusal = next(line for line in b_log.splitlines() if closed.headers["x-request-id"] in line)
    assert '"status":503' in refusal
    assert '"store_errors":["rate limiter"]' in refusal


def test_both_instances_shut_down_cleanly(instances: Instances) -> None:
    for proxy in (instances.a, instances.b):
        assert proxy.stop() == 0
        assert "Traceback" not in proxy.log()


def test_the_readme_shows_the_example_configuration() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Running several instances", 1)[1]
    block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    assert block == EXAMPLE.read_text()


def test_the_example_configuration_builds_a_redis_stack() -> None:
    from llm_proxy import build_stack, parse_config
    from middlewares import RedisStore

    config = parse_config(example_config("redis://127.0.0.1:1/0"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TEAM_A_KEY", "sk-x")
        stack = build_stack(config)
    assert [type(resource) for resource in stack.resources] == [RedisStore]
