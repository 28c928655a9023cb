"""The TOML configuration: the documented shape, and errors that name the file and key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_proxy import key_warnings, load_config, parse_config
from pipeline import ConfigError, read_secret

CONTRACT = """
[server]
host = "127.0.0.1"
port = 8080
max_body_bytes = 10485760

[[providers]]
name = "up"
kind = "openai"
base_url = "http://127.0.0.1:18080/v1"
api_key_env = "UPSTREAM_API_KEY"
timeout = 30

[[providers]]
name = "backup-up"
kind = "mock"

[[models]]
name = "fast"
provider = "up"
upstream_model = "gpt-4o-mini"
fallbacks = ["backup"]

[[models]]
name = "backup"
provider = "backup-up"

[[keys]]
id = "team-a"
key_env = "TEAM_A_KEY"
models = ["fast"]
requests_per_minute = 60
tokens_per_minute = 100000
max_concurrency = 8

[ratelimit]
requests_per_minute = 600

[cache]
enabled = true
ttl = 300
max_entries = 10000

[retry]
max_attempts = 3

[store]
backend = "memory"
url = "redis://127.0.0.1:6379/0"

[log]
format = "json"
level = "info"
"""


def test_the_documented_shape_loads(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(CONTRACT)
    config = load_config(path)
    assert config.server.max_body_bytes == 10485760
    assert [p.name for p in config.providers] == ["up", "backup-up"]
    assert config.providers[0].timeout == 30
    assert config.models[0].upstream == "gpt-4o-mini"
    assert config.models[1].upstream == "backup"
    assert config.keys[0].max_concurrency == 8
    assert config.ratelimit.requests_per_minute == 600
    assert config.cache.enabled
    assert config.retry.max_attempts == 3
    assert config.store.backend == "memory"
    assert config.log.format == "json"


def test_an_empty_file_is_all_defaults() -> None:
    config = parse_config("")
    assert config.server.host == "127.0.0.1"
    assert config.keys == []


def test_the_provider_timeout_does_not_undercut_the_stream_timeouts() -> None:
    # Each wait on the upstream may last as long as a whole request may.
    config = parse_config('[[providers]]\nname = "a"\nkind = "mock"')
    assert config.timeouts.total is not None
    assert config.providers[0].timeout >= config.timeouts.total


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ('[server]\nport = "eighty"', "server.port", "Expected `int`, got `str`"),
        ("[server]\nport = 70000", "server.port", "<= 65535"),
        ("[cache]\nttl = -1", "cache.ttl", "> 0"),
        (
            '[[providers]]\nname = "a"\nkind = "openai"\nbase_url = "x"\ntimout = 3',
            "providers[0].timout",
            "unknown key `timout` (did you mean `timeout`?)",
        ),
        (
            '[[providers]]\nname = "a"\nkind = "palm"',
            "providers[0].kind",
            "unknown kind `palm` (one of: openai, anthropic, azure, gemini, completions, mock",
        ),
        ('[[providers]]\nname = "a"\nkind = "openai"', "providers[0].base_url", "needs one"),
        (
            '[[models]]\nname = "a"\nprovider = "nope"',
            "models[0].provider",
            "no provider named `nope`",
        ),
        (
            '[[providers]]\nname = "p"\nkind = "mock"\n'
            '[[models]]\nname = "a"\nprovider = "p"\nfallbacks = ["b"]',
            "models[0].fallbacks[0]",
            "no model named `b`",
        ),
        ('[[keys]]\nid = "k"', "keys[0]", "exactly one of `key_env` and `key_sha256`"),
        (
            '[[keys]]\nid = "k"\nkey_sha256 = "abc"',
            "keys[0].key_sha256",
            "Expected `str` matching regex",
        ),
        ('[store]\non_error = "shrug"', "store.on_error", "Invalid enum value"),
    ],
)
def test_mistakes_name_the_file_and_the_key_path(text: str, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "proxy.toml")
    assert info.value.param == path
    assert str(info.value).startswith("proxy.toml: ")
    assert message in str(info.value)
    assert f"at `{path}`" in str(info.value)


def test_every_problem_is_reported_at_once_each_with_its_key_path() -> None:
    text = """
[servr]
port = 1

[server]
prot = 8080
max_body_bytes = "big"

[[providers]]
name = "a"
knd = "mock"

[[providers]]
name = "b"
kind = "mock"
timeout = -1

[[keys]]
id = "k"
key_env = "K"
models = ["*", 3]

[[middlewares]]
after = "auth"
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "proxy.toml")

    assert str(info.value).splitlines() == [
        "proxy.toml: unknown key `servr` (did you mean `server`?) - at `servr`",
        "proxy.toml: unknown key `prot` (did you mean `port`?) - at `server.prot`",
        "proxy.toml: Expected `int`, got `str` - at `server.max_body_bytes`",
        "proxy.toml: unknown key `knd` (did you mean `kind`?) - at `providers[0].knd`",
        "proxy.toml: missing required key `kind` - at `providers[0].kind`",
        "proxy.toml: Expected `float` > 0.0 - at `providers[1].timeout`",
        "proxy.toml: Expected `str`, got `int` - at `keys[0].models[1]`",
        "proxy.toml: missing required key `use` - at `middlewares[0].use`",
    ]
    assert info.value.param == "servr"


def test_an_unknown_key_far_from_any_gets_no_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"unknown key `zzz` - at `cache.zzz`$"):
        parse_config("[cache]\nzzz = 1")


def test_every_broken_reference_is_reported_at_once() -> None:
    text = """
[[providers]]
name = "p"
kind = "palm"

[[models]]
name = "a"
provider = "nope"
fallbacks = ["b"]

[[middlewares]]
use = "x:y"
before = "caching"
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text)

    lines = str(info.value).splitlines()
    assert [line.rpartition(" - at ")[2] for line in lines] == [
        "`providers[0].kind`",
        "`models[0].provider`",
        "`models[0].fallbacks[0]`",
        "`middlewares[0].before`",
    ]
    assert "no built-in middleware `caching` (one of: access_log, metrics" in lines[3]


def test_both_spellings_of_a_section_are_refused_together() -> None:
    with pytest.raises(ConfigError, match="give `\\[rate_limit\\]` or `\\[ratelimit\\]`, not both"):
        parse_config("[rate_limit]\nrequests_per_minute = 1\n[ratelimit]\nrequests_per_minute = 2")


def test_a_key_glob_that_matches_no_model_is_a_warning_not_an_error() -> None:
    config = parse_config(
        '[[providers]]\nname = "p"\nkind = "mock"\n'
        '[[models]]\nname = "gpt-4o"\nprovider = "p"\n'
        '[[keys]]\nid = "k"\nkey_env = "K"\nmodels = ["gpt-4o*", "gtp-4o"]\n'
    )

    assert key_warnings(config) == [
        "key `k`: `gtp-4o` matches no configured model - at `keys[0].models[1]`"
    ]


def test_malformed_toml_names_the_file() -> None:
    with pytest.raises(ConfigError, match=r"^proxy.toml: not valid TOML"):
        parse_config("[server\nport = 1", "proxy.toml")


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_read_secret_names_the_variable_never_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLM_PROXY_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="`LLM_PROXY_TEST_KEY` is not set"):
        read_secret("LLM_PROXY_TEST_KEY")
    monkeypatch.setenv("LLM_PROXY_TEST_KEY", "sk-secret-value")
    assert read_secret("LLM_PROXY_TEST_KEY") == "sk-secret-value"


@pytest.mark.parametrize(
    "value", ["sk-secret-value\n", "  sk-secret-value\r\n", "\tsk-secret-value "]
)
def test_read_secret_strips_surrounding_whitespace(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    # Secrets read from files (Kubernetes secrets, `echo > file`) often end with a newline.
    monkeypatch.setenv("LLM_PROXY_TEST_KEY", value)
    assert read_secret("LLM_PROXY_TEST_KEY") == "sk-secret-value"


@pytest.mark.parametrize(
    "value", ["hunter2\nhunter3", "hunter2\x08x", "hun\x7fter2", "\x1bhunter2"]
)
def test_read_secret_refuses_control_characters_without_showing_the_value(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("LLM_PROXY_TEST_KEY", value)
    with pytest.raises(ConfigError, match="`LLM_PROXY_TEST_KEY` contains control") as info:
        read_secret("LLM_PROXY_TEST_KEY")
    assert "hun" not in info.value.message


def test_a_secret_of_only_whitespace_is_not_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_PROXY_TEST_KEY", " \n ")
    with pytest.raises(ConfigError, match="`LLM_PROXY_TEST_KEY` is not set"):
        read_secret("LLM_PROXY_TEST_KEY")
