"""Plugins from the configuration file: your own provider and middlewares by import path."""

from __future__ import annotations

import pytest
import trio

from llm_proxy import Stack, build_stack, parse_config
from middlewares import Auth, Timeout
from pipeline import ConfigError, Context, Message, Request

from . import plugins

PROVIDER = """
[[providers]]
name = "mine"
kind = "tests.llm_proxy.plugins:Echo"
options = { greeting = "hi" }

[[models]]
name = "m"
provider = "mine"
"""

KEYS = """
[[keys]]
id = "team"
key_env = "LLM_PROXY_TEST_PLUGIN_KEY"
"""


def build(text: str) -> Stack:
    return build_stack(parse_config(text, "proxy.toml"), "proxy.toml")


async def ask(stack: Stack) -> str:
    request = Request(model="m", messages=[Message(role="user", content="hello")])
    ctx = Context(headers={"authorization": "Bearer sk-plugin"})
    async with stack.pipeline:
        answer = await stack.pipeline.complete(request, ctx)
    assert answer.choices[0].message.content is not None
    return answer.choices[0].message.content


@pytest.fixture(autouse=True)
def plugin_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_PROXY_TEST_PLUGIN_KEY", "sk-plugin")


async def test_a_plugin_provider_is_built_by_its_from_config() -> None:
    stack = build(PROVIDER)

    assert isinstance(stack.providers["mine"], plugins.Echo)
    assert await ask(stack) == "hi from mine: "


async def test_plugin_middlewares_see_the_request_in_their_configured_order() -> None:
    stack = build(
        PROVIDER
        + KEYS
        + """
[[middlewares]]
use = "tests.llm_proxy.plugins:Tag"
options = { name = "last" }

[[middlewares]]
use = "tests.llm_proxy.plugins:tagger"
after = "auth"
options = { name = "after-auth" }

[[middlewares]]
use = "tests.llm_proxy.plugins:mark"
before = "auth"

[[middlewares]]
use = "tests.llm_proxy.plugins:Tag"
options = { name = "also-last" }

[[middlewares]]
use = "tests.llm_proxy.plugins:tagger"
after = "auth"
options = { name = "after-auth", suffix = "-too" }
"""
    )

    # `mark` runs before auth (no key yet); plugins at one position keep the file's order;
    # those without a position run last, after every built-in.
    assert await ask(stack) == (
        "hi from mine: mark@- after-auth@team after-auth-too@team last@team also-last@team"
    )
    chain = list(stack.pipeline.middlewares)
    auth = next(i for i, m in enumerate(chain) if isinstance(m, Auth))
    timeout = next(i for i, m in enumerate(chain) if isinstance(m, Timeout))
    assert chain[auth - 1] is plugins.mark
    assert auth < timeout == len(chain) - 3


async def test_a_position_names_a_builtin_even_when_it_is_off() -> None:
    # No [cache] and no [[keys]]: the plugins still land where those would be.
    stack = build(
        PROVIDER
        + """
[[middlewares]]
use = "tests.llm_proxy.plugins:Tag"
options = { name = "last" }

[[middlewares]]
use = "tests.llm_proxy.plugins:Tag"
before = "cache"
options = { name = "before-cache" }

[[middlewares]]
use = "tests.llm_proxy.plugins:Tag"
after = "auth"
options = { name = "after-auth" }
"""
    )

    assert await ask(stack) == "hi from mine: after-auth@- before-cache@- last@-"


def provider(kind: str, options: str = "") -> str:
    return PROVIDER.replace("tests.llm_proxy.plugins:Echo", kind).replace(
        'options = { greeting = "hi" }', options
    )


def middleware(use: str, rest: str = "") -> str:
    return PROVIDER + f'[[middlewares]]\nuse = "{use}"\n{rest}\n'


P = "tests.llm_proxy.plugins"


@pytest.mark.parametrize(
    ("text", "message", "param"),
    [
        (
            provider("tests.llm_proxy.nothing_here:Echo"),
            "cannot import `tests.llm_proxy.nothing_here`: No module named",
            "providers[0].kind",
        ),
        (
            provider("tests.llm_proxy.broken_plugin:Echo"),
            "cannot import `tests.llm_proxy.broken_plugin`: this module is broken",
            "providers[0].kind",
        ),
        (provider(f"{P}:Missing"), f"`{P}` has no `Missing`", "providers[0].kind"),
        (
            provider(f"{P}:NoFromConfig"),
            f"`{P}:NoFromConfig` has no `from_config\\(section\\)`",
            "providers[0].kind",
        ),
        (
            provider(f"{P}:NotAProvider"),
            "returned int, which has no `execute\\(request, ctx\\)`",
            "providers[0].kind",
        ),
        (
            provider(f"{P}:Echo", 'options = { greting = "hi" }'),
            f"`{P}:Echo.from_config` refused the section: .*unknown field `greting`",
            "providers[0]",
        ),
        (
            middleware(f"{P}.nothing_here:x"),
            f"cannot import `{P}.nothing_here`",
            "middlewares[0].use",
        ),
        (middleware(f"{P}:Missing"), f"`{P}` has no `Missing`", "middlewares[0].use"),
        (middleware(f"{P}"), "is not an import path of the form", "middlewares[0].use"),
        (middleware(f"{P}:NOT_CALLABLE"), "is not callable", "middlewares[0].use"),
        (
            middleware(f"{P}:Tag"),
            "does not take these options: missing a required argument: 'name'",
            "middlewares[0].options",
        ),
        (
            middleware(f"{P}:Tag", 'options = { name = "x", colour = "red" }'),
            "does not take these options: got an unexpected keyword argument 'colour'",
            "middlewares[0].options",
        ),
        (
            middleware(f"{P}:two_arguments"),
            "gave a middleware that is not called as \\(request, ctx, call_next\\)",
            "middlewares[0].use",
        ),
        (
            middleware(f"{P}:returns_a_number"),
            "returned int, not a middleware",
            "middlewares[0].use",
        ),
        (
            middleware(f"{P}:mark", 'after = "auht"'),
            "no built-in middleware `auht` \\(one of: access_log, metrics, deadline, auth,",
            "middlewares[0].after",
        ),
        (
            middleware(f"{P}:mark", 'before = "caching"'),
            "no built-in middleware `caching`",
            "middlewares[0].before",
        ),
        (
            middleware(f"{P}:mark", 'after = "auth"\nbefore = "cache"'),
            "give `after` or `before`, not both",
            "middlewares[0]",
        ),
    ],
)
def test_every_plugin_failure_is_a_config_error_naming_its_key_path(
    text: str, message: str, param: str
) -> None:
    with pytest.raises(ConfigError, match=f"^proxy.toml: .*{message}") as info:
        build(text)

    assert info.value.param == param
    assert str(info.value).endswith(f" - at `{param}`")


def test_a_plugin_provider_is_closed_with_the_pipeline() -> None:
    stack = build(PROVIDER)
    closed: list[str] = []

    async def aclose() -> None:
        closed.append("mine")

    stack.providers["mine"].aclose = aclose  # type: ignore[method-assign]
    trio.run(stack.pipeline.aclose)

    assert closed == ["mine"]
