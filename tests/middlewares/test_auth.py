"""Auth: keys by header, by hash, from the environment; model permissions; no secret kept."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middlewares import ApiKey, Auth, KeyConfig
from pipeline import AuthenticationError, ConfigError, Context, PermissionDeniedError, Pipeline
from providers import MockProvider

from ..conftest import make_request

SECRET = "sk-test-0123456789abcdef"
ALICE = ApiKey("alice", models=("gpt-4o*", "mock-*"), requests_per_minute=5, max_concurrency=2)


async def call(auth: Auth, headers: dict[str, str], model: str = "mock-1") -> Context:
    ctx = Context(headers=headers)
    await Pipeline(MockProvider(), [auth]).complete(make_request(model=model), ctx)
    return ctx


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": f"Bearer {SECRET}"},
        {"authorization": f"bearer   {SECRET} "},
        {"x-api-key": SECRET},
    ],
)
async def test_a_known_key_is_accepted_from_either_header(headers: dict[str, str]) -> None:
    ctx = await call(Auth({SECRET: ALICE}), headers)
    assert ctx.key_id == "alice"
    assert ctx.key is ALICE


@pytest.mark.parametrize(
    ("headers", "code", "message"),
    [
        ({}, "missing_api_key", "No API key"),
        ({"authorization": "Bearer "}, "missing_api_key", "No API key"),
        ({"x-api-key": ""}, "missing_api_key", "No API key"),
        ({"authorization": "Bearer sk-wrong"}, "invalid_api_key", "Invalid API key"),
        ({"authorization": f"Basic {SECRET}"}, "invalid_api_key", "must be `Bearer <API key>`"),
        ({"x-api-key": SECRET.upper()}, "invalid_api_key", "Invalid API key"),
    ],
)
async def test_a_missing_or_unknown_key_is_401_and_the_provider_is_not_called(
    headers: dict[str, str], code: str, message: str
) -> None:
    provider = MockProvider()
    ctx = Context(headers=headers)
    with pytest.raises(AuthenticationError, match=re.escape(message)) as info:
        await Pipeline(provider, [Auth({SECRET: ALICE})]).handle(make_request(), ctx)
    assert info.value.status == 401
    assert info.value.code == code
    assert info.value.headers == {"www-authenticate": "Bearer"}
    assert "sk-" not in info.value.message
    assert provider.calls == 0
    assert ctx.key_id is None


async def test_a_model_the_key_may_not_use_is_403_naming_the_model_not_the_key() -> None:
    provider = MockProvider()
    ctx = Context(headers={"x-api-key": SECRET})
    with pytest.raises(PermissionDeniedError, match="`claude-3`") as info:
        await Pipeline(provider, [Auth({SECRET: ALICE})]).handle(
            make_request(model="claude-3"), ctx
        )
    assert info.value.status == 403
    assert info.value.param == "model"
    assert SECRET not in info.value.message
    assert provider.calls == 0


def test_a_key_lists_the_models_it_may_use() -> None:
    models = ["gpt-4o", "gpt-4o-mini", "GPT-4O", "claude-3", "mock-1"]
    assert ALICE.allowed_models(models) == ["gpt-4o", "gpt-4o-mini", "mock-1"]
    assert ApiKey("any").allowed_models(models) == models
    assert ApiKey("none", models=()).allowed_models(models) == []


async def test_keys_may_be_given_as_sha256_digests() -> None:
    digest = Auth.hash_key(SECRET)
    assert len(digest) == 64
    auth = Auth(hashed={digest.upper(): ALICE})
    assert (await call(auth, {"x-api-key": SECRET})).key_id == "alice"


@given(secret=st.text(min_size=1).map(str.strip).filter(bool), other=st.text())
def test_only_the_exact_key_authenticates(secret: str, other: str) -> None:
    auth = Auth({secret: ALICE})
    assert auth.authenticate({"authorization": f"Bearer {secret}"}) is ALICE
    if other.strip() != secret:
        expected = "Invalid API key" if other.strip() else "No API key"
        with pytest.raises(AuthenticationError, match=expected):
            auth.authenticate({"x-api-key": other})


def test_the_raw_key_is_not_kept_anywhere_on_the_middleware() -> None:
    auth = Auth({SECRET: ALICE})
    assert SECRET not in repr(auth)
    assert SECRET not in repr(vars(auth))
    assert SECRET not in repr(ALICE)
    assert repr(auth) == "Auth(key_ids=['alice'])"


def test_from_config_reads_keys_from_the_environment_or_takes_digests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALICE_KEY", SECRET)
    auth = Auth.from_config(
        [
            KeyConfig(id="alice", key_env="ALICE_KEY", models=["mock-*"], tokens_per_minute=900),
            KeyConfig(id="bob", key_sha256=Auth.hash_key("sk-bob")),
        ]
    )
    alice = auth.authenticate({"x-api-key": SECRET})
    assert alice == ApiKey("alice", models=("mock-*",), tokens_per_minute=900)
    assert auth.authenticate({"x-api-key": "sk-bob"}).id == "bob"


def test_a_missing_key_variable_is_a_config_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOPE_KEY", raising=False)
    with pytest.raises(ConfigError, match="`NOPE_KEY`"):
        Auth.from_config([KeyConfig(id="a", key_env="NOPE_KEY")])


def test_ambiguous_or_malformed_keys_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="`a` and `b` have the same secret"):
        Auth({SECRET: ApiKey("a")}, hashed={Auth.hash_key(SECRET): ApiKey("b")})
    with pytest.raises(ConfigError, match="duplicate key id `a`"):
        Auth({"one": ApiKey("a"), "two": ApiKey("a")})
    with pytest.raises(ConfigError, match="not 64 hex digits"):
        Auth(hashed={"abc": ApiKey("a")})
    monkeypatch.setenv("K1", SECRET)
    monkeypatch.setenv("K2", SECRET)
    with pytest.raises(ConfigError, match="same secret"):
        Auth.from_config([KeyConfig(id="a", key_env="K1"), KeyConfig(id="b", key_env="K2")])


async def test_with_no_keys_every_request_is_rejected() -> None:
    with pytest.raises(AuthenticationError, match="Invalid API key"):
        await call(Auth(), {"x-api-key": SECRET})
