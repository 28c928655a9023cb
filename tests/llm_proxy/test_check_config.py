"""`llm-proxy check-config`: every problem in one run, suggestions, and warnings that pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_proxy.cli import main

MODELS = """
[[providers]]
name = "local"
kind = "mock"

[[models]]
name = "small"
provider = "local"
"""


def check(tmp_path: Path, text: str) -> int:
    path = tmp_path / "proxy.toml"
    path.write_text(text)
    return main(["check-config", str(path)])


def test_every_mistake_is_listed_in_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "[servr]\n[server]\nprot = 1\n[cache]\nttl = 0\n" + MODELS + "[[keys]]\nid = 'k'\n"

    assert check(tmp_path, text) == 2

    err = capsys.readouterr().err
    path = tmp_path / "proxy.toml"
    assert err.splitlines() == [
        f"llm-proxy: configuration error: {path}: unknown key `servr` (did you mean `server`?)"
        " - at `servr`",
        f"{path}: unknown key `prot` (did you mean `port`?) - at `server.prot`",
        f"{path}: Expected `float` > 0.0 - at `cache.ttl`",
    ]


def test_every_provider_that_cannot_be_built_is_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLM_PROXY_TEST_UNSET_KEY", raising=False)
    text = (
        MODELS.replace('kind = "mock"', 'kind = "mock"\noptions = { chunkz = 2 }')
        + "[[providers]]\nname = 'up'\nkind = 'anthropic'\nbase_url = 'https://example.test'\n"
        "api_key_env = 'LLM_PROXY_TEST_UNSET_KEY'\n"
        "[[providers]]\nname = 'mine'\nkind = 'tests.llm_proxy.plugins:Nowhere'\n"
    )

    assert check(tmp_path, text) == 2

    lines = capsys.readouterr().err.splitlines()
    assert [line.rpartition(" - at ")[2] for line in lines] == [
        "`providers[0].options`",
        "`providers[1]`",
        "`providers[2].kind`",
    ]
    assert "unknown field `chunkz`" in lines[0]
    assert "`LLM_PROXY_TEST_UNSET_KEY` is not set" in lines[1]
    assert "`tests.llm_proxy.plugins` has no `Nowhere`" in lines[2]


def test_every_plugin_middleware_that_cannot_be_loaded_is_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = MODELS + (
        "[[middlewares]]\nuse = 'tests.llm_proxy.no_such_module:x'\n"
        "[[middlewares]]\nuse = 'tests.llm_proxy.plugins:Tag'\noptions = { colour = 'red' }\n"
    )

    assert check(tmp_path, text) == 2

    lines = capsys.readouterr().err.splitlines()
    assert "cannot import `tests.llm_proxy.no_such_module`" in lines[0]
    assert lines[0].endswith("- at `middlewares[0].use`")
    assert "does not take these options" in lines[1]
    assert lines[1].endswith("- at `middlewares[1].options`")


def test_a_key_glob_matching_no_model_warns_and_still_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_PROXY_TEST_TEAM_KEY", "sk-team")
    text = MODELS + "[[keys]]\nid = 'team'\nkey_env = 'LLM_PROXY_TEST_TEAM_KEY'\n"
    text += "models = ['small', 'smal*', 'large-*']\n"

    assert check(tmp_path, text) == 0

    out = capsys.readouterr().out
    path = tmp_path / "proxy.toml"
    assert (
        f"{path}: warning: key `team`: `large-*` matches no configured model "
        "- at `keys[0].models[2]`"
    ) in out
    assert "`smal*`" not in out
    assert "every provider validated" in out
