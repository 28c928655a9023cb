"""`llm-proxy check-config` and the configuration errors of `llm-proxy serve`."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import structlog
import trio

from llm_proxy import Stack, cli, configure_process_logging, default_config, parse_config
from llm_proxy.cli import _exposure_warning, _validate_providers, main
from pipeline import BaseProvider, Pipeline, Provider, ProviderError
from providers import MockProvider

GOOD = """
[[providers]]
name = "local"
kind = "mock"
options = { text = "hi", chunks = 2 }

[[models]]
name = "small"
provider = "local"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proxy.toml"
    path.write_text(text)
    return path


def test_check_config_reports_each_provider(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, GOOD)

    assert main(["check-config", str(path)]) == 0

    out = capsys.readouterr().out
    assert f"{path}: the configuration is valid (1 providers, 1 models, 0 keys)" in out
    assert "ok    provider `local` (mock)" in out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nport = 'x'\n", "Expected `int`, got `str` - at `server.port`"),
        ("[[models]]\nname = 'm'\nprovider = 'nowhere'\n", "no provider named `nowhere`"),
        (
            GOOD.replace("chunks = 2", "chunks = 0"),
            "provider `local`: Expected `int` >= 1 - at `providers[0].options.chunks`",
        ),
        (
            "[[providers]]\nname = 'up'\nkind = 'anthropic'\nbase_url = 'https://example.test'\n"
            "api_key_env = 'LLM_PROXY_TEST_UNSET_KEY'\n[[models]]\nname = 'm'\nprovider = 'up'\n",
            "provider `up`: the API key environment variable `LLM_PROXY_TEST_UNSET_KEY` is not set",
        ),
        ("", "no models are configured - at `models`"),
    ],
    ids=["type", "reference", "option", "key", "empty"],
)
@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_configuration_errors_exit_2_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str, command: str
) -> None:
    path = write(tmp_path, text)
    argv = [command, str(path)] if command == "check-config" else [command, "--config", str(path)]

    assert main(argv) == 2

    err = capsys.readouterr().err
    assert err.startswith(f"llm-proxy: configuration error: {path}: ")
    assert message in err


def test_serve_refuses_several_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[server]\nworkers = 4\n" + GOOD)

    assert main(["serve", "--config", str(path)]) == 2

    assert "at `server.workers`" in capsys.readouterr().err


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "absent.toml")]) == 2
    assert "cannot read the configuration" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("port", "message"),
    [("70000", "70000 is not a port"), ("abc", "argument --port: 'abc' is not a whole number")],
)
def test_bad_port_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], port: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port", port])

    assert exited.value.code == 2
    assert message in capsys.readouterr().err


class Failing(BaseProvider):
    async def validate(self) -> None:
        raise ProviderError("the upstream said 401: invalid key", upstream_status=401)


class Hanging(BaseProvider):
    async def validate(self) -> None:
        await trio.sleep_forever()


async def test_failed_validation_is_reported_and_counted(
    capsys: pytest.CaptureFixture[str], autojump_clock: object
) -> None:
    config = parse_config(
        """
        [[providers]]
        name = "good"
        kind = "mock"
        [[providers]]
        name = "bad"
        kind = "mock"
        [[providers]]
        name = "slow"
        kind = "mock"
        timeout = 3
        [[models]]
        name = "m"
        provider = "good"
        """
    )
    providers: dict[str, Provider] = {"good": MockProvider(), "bad": Failing(), "slow": Hanging()}
    stack = Stack(Pipeline(providers["good"]), providers)

    assert await _validate_providers(stack, config) == 2

    out = capsys.readouterr().out.splitlines()
    assert out == [
        "  ok    provider `good` (mock)",
        "  FAIL  provider `bad` (mock): The upstream rejected the proxy's credentials (HTTP 401):"
        " the upstream said 401: invalid key",
        "  FAIL  provider `slow` (mock): no answer within 3 s",
    ]


async def test_validation_does_not_wait_as_long_as_a_request_may(
    capsys: pytest.CaptureFixture[str], autojump_clock: object
) -> None:
    # The provider timeout (600 s by default) is for answers; a check gives up sooner.
    config = parse_config('[[providers]]\nname = "slow"\nkind = "mock"')
    stack = Stack(Pipeline(MockProvider()), {"slow": Hanging()})

    assert await _validate_providers(stack, config) == 1

    assert capsys.readouterr().out.splitlines() == [
        "  FAIL  provider `slow` (mock): no answer within 30 s"
    ]


def test_exposure_warning() -> None:
    config = default_config()
    with_keys = parse_config(GOOD + '[[keys]]\nid = "team"\nkey_sha256 = "' + "a" * 64 + '"\n')

    assert _exposure_warning(config, "127.0.0.1") is None
    assert _exposure_warning(config, "::1") is None
    assert _exposure_warning(config, "localhost") is None
    assert _exposure_warning(with_keys, "0.0.0.0") is None
    for host in ("0.0.0.0", "::", "proxy.example.internal"):
        warning = _exposure_warning(config, host)
        assert warning is not None
        assert f"authentication is OFF and llm-proxy listens on {host}" in warning


def test_serve_on_a_taken_port_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Logging setup is global; this test must not leave it pointing at its captured stderr.
    monkeypatch.setattr(cli, "configure_process_logging", lambda config: None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        assert main(["serve", "--host", "127.0.0.1", "--port", str(port)]) == 1

    assert f"cannot listen on 127.0.0.1:{port}: [Errno 98] Address already in use" in (
        capsys.readouterr().err
    )


def test_logs_redact_the_keys_as_they_are_sent(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The variable ends with a newline, as secrets read from files do; the key sent (and
    # so the one that may surface in a log line) is the stripped value.
    monkeypatch.setenv("LLM_PROXY_TEST_KEY", "sk-upstream-secret\n")
    config = parse_config(
        GOOD
        + """
[[providers]]
name = "remote"
kind = "openai"
base_url = "https://api.example.com/v1"
api_key_env = "LLM_PROXY_TEST_KEY"
"""
    )
    try:
        configure_process_logging(config)
        # An upstream that echoes the key it was sent, as OpenAI's 401 message does.
        structlog.get_logger("llm_proxy.test").error(
            "upstream_rejected", detail="Incorrect API key provided: sk-upstream-secret."
        )
    finally:
        structlog.reset_defaults()
    err = capsys.readouterr().err
    assert "upstream_rejected" in err
    assert "Incorrect API key provided: [REDACTED]." in err
    assert "sk-upstream-secret" not in err
