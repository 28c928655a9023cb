"""The proxy's configuration: a TOML file, validated by msgspec.

A typo or a wrong type is a `ConfigError` that names the file and the key path
(`proxy.toml: Expected `int`, got `str` - at `providers[0].timeout``); references between
sections (a model's provider, a fallback, a key's models) are checked too. Secrets never
appear in the file: API keys are read from the environment variables it names.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from ._errors import ConfigError
from ._types import _PATH
from ._types import _field_path as field_path

__all__ = [
    "CacheConfig",
    "ConcurrencyConfig",
    "KeyConfig",
    "LogConfig",
    "ModelConfig",
    "ProviderConfig",
    "ProxyConfig",
    "RateLimitConfig",
    "RetryConfig",
    "ServerConfig",
    "StoreConfig",
    "TimeoutConfig",
    "load_config",
    "parse_config",
    "read_secret",
]

Positive = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
Sha256Hex = Annotated[str, msgspec.Meta(pattern="^[0-9a-fA-F]{64}$")]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Unknown keys are errors: a misspelt option must not be silently ignored."""


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    max_body_bytes: PositiveInt = 10 * 1024 * 1024
    read_timeout: Positive = 30.0
    """Seconds a client may take to send its request body, however it trickles in."""
    keep_alive_timeout: Positive = 5.0
    """Seconds an idle connection, or one whose request headers are unfinished, stays open."""
    grace_period: Positive = 10.0
    """Seconds running streams may take to finish after SIGINT/SIGTERM."""
    workers: PositiveInt = 1
    allow_per_worker_state: bool = False
    """Allow workers > 1 with the memory store (limits and cache then count per worker)."""


class ProviderConfig(_Section):
    """One upstream API.

    `options` holds provider-specific settings (for `mock`: text, chunks, ttft, chunk_delay;
    for `anthropic`: version, default max_tokens).
    """

    name: str
    kind: Literal["openai", "anthropic", "completions", "mock"]
    base_url: str | None = None
    api_key_env: str | None = None
    timeout: Positive = 600.0
    """Seconds any single wait on the upstream may take (sending, waiting for a pooled
    connection, each read once a stream has started), and a whole non-streaming answer.
    Not the length of a stream nor its time to the first chunk: `[timeouts]` bound those
    (total and first_token), and `first_token_timeout` below."""
    connect_timeout: Positive = 5.0
    first_token_timeout: Positive | None = None
    """Seconds a stream may take to produce its first chunk (unset: only `[timeouts]`)."""
    pool_size: PositiveInt = 100
    allow_insecure_http: bool = False
    """Allow plain http:// to a host that is not loopback."""
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    options: dict[str, Any] = msgspec.field(default_factory=dict)


class ModelConfig(_Section):
    """A model name clients may ask for, and where it goes."""

    name: str
    provider: str
    upstream_model: str | None = None
    fallbacks: list[str] = msgspec.field(default_factory=list)
    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None

    @property
    def upstream(self) -> str:
        return self.upstream_model or self.name


class KeyConfig(_Section):
    """A client API key: its id, where its secret is, and what it may do."""

    id: str
    key_env: str | None = None
    key_sha256: Sha256Hex | None = None
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    max_concurrency: PositiveInt | None = None


class RateLimitConfig(_Section):
    """Default limits for every key, and limits over all keys together."""

    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    global_requests_per_minute: PositiveInt | None = None
    global_tokens_per_minute: PositiveInt | None = None


class ConcurrencyConfig(_Section):
    max_concurrency: PositiveInt | None = None
    """In-flight requests over all keys."""
    per_key: PositiveInt | None = None
    """Default in-flight requests per key (a key's max_concurrency wins)."""
    reject: bool = False
    """Answer 503 at once when full, instead of waiting for a slot."""
    max_wait: Positive = 30.0


class CacheConfig(_Section):
    enabled: bool = False
    ttl: Positive = 300.0
    max_entries: PositiveInt = 10_000
    max_bytes: PositiveInt = 64 * 1024 * 1024
    shared: bool = False
    """Share entries between keys (default: each key id has its own cache)."""


class RetryConfig(_Section):
    max_attempts: PositiveInt = 3
    base_delay: Positive = 0.5
    max_delay: Positive = 8.0
    max_retry_after: Positive = 30.0
    """Longest `Retry-After` to honour; a longer one is not retried."""
    deadline: Positive | None = None
    """Seconds all attempts together may take."""


class TimeoutConfig(_Section):
    total: Positive | None = 600.0
    first_token: Positive | None = 120.0
    idle: Positive | None = 120.0


class StoreConfig(_Section):
    backend: Literal["memory", "redis"] = "memory"
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "llm-proxy:"
    on_error: Literal["fail_open", "fail_closed"] = "fail_open"
    timeout: Positive = 1.0


class LogConfig(_Section):
    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


class ProxyConfig(_Section):
    """The whole configuration file."""

    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    providers: list[ProviderConfig] = msgspec.field(default_factory=list)
    models: list[ModelConfig] = msgspec.field(default_factory=list)
    keys: list[KeyConfig] = msgspec.field(default_factory=list)
    ratelimit: RateLimitConfig = msgspec.field(default_factory=RateLimitConfig)
    concurrency: ConcurrencyConfig = msgspec.field(default_factory=ConcurrencyConfig)
    cache: CacheConfig = msgspec.field(default_factory=CacheConfig)
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    timeouts: TimeoutConfig = msgspec.field(default_factory=TimeoutConfig)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)

    def check(self, source: str = "config") -> None:
        """Check references between sections.

        Raises:
          ConfigError: naming `source` and the key path of the first problem.
        """

        def fail(path: str, message: str) -> ConfigError:
            return ConfigError(f"{source}: {message} - at `{path}`", param=path)

        providers: set[str] = set()
        for i, provider in enumerate(self.providers):
            if provider.name in providers:
                raise fail(f"providers[{i}].name", f"duplicate provider `{provider.name}`")
            providers.add(provider.name)
            if provider.kind != "mock" and not provider.base_url:
                raise fail(f"providers[{i}].base_url", f"a `{provider.kind}` provider needs one")
        models: set[str] = set()
        for i, model in enumerate(self.models):
            if model.name in models:
                raise fail(f"models[{i}].name", f"duplicate model `{model.name}`")
            models.add(model.name)
            if model.provider not in providers:
                raise fail(f"models[{i}].provider", f"no provider named `{model.provider}`")
        for i, model in enumerate(self.models):
            for j, fallback in enumerate(model.fallbacks):
                if fallback not in models:
                    raise fail(f"models[{i}].fallbacks[{j}]", f"no model named `{fallback}`")
                if fallback == model.name:
                    raise fail(f"models[{i}].fallbacks[{j}]", "a model cannot fall back to itself")
        ids: set[str] = set()
        for i, key in enumerate(self.keys):
            if key.id in ids:
                raise fail(f"keys[{i}].id", f"duplicate key id `{key.id}`")
            ids.add(key.id)
            if (key.key_env is None) == (key.key_sha256 is None):
                raise fail(f"keys[{i}]", "give exactly one of `key_env` and `key_sha256`")


def parse_config(text: str | bytes, source: str = "config") -> ProxyConfig:
    """Decode and check a TOML configuration.

    Args:
      text: the TOML document.
      source: how errors name the document (usually its file name).

    Raises:
      ConfigError: the TOML is malformed, a key is unknown or has a wrong type or value, or
        a reference points nowhere; the message names `source` and the key path.
    """
    try:
        config = msgspec.toml.decode(text, type=ProxyConfig)
    except msgspec.ValidationError as exc:
        message = str(exc)
        path = field_path(message)
        message = _PATH.sub("", message)
        where = f" - at `{path}`" if path else ""
        raise ConfigError(f"{source}: {message}{where}", param=path) from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    config.check(source)
    return config


def load_config(path: str | os.PathLike[str]) -> ProxyConfig:
    """Read, decode and check a TOML configuration file.

    Raises:
      ConfigError: the file cannot be read or is not a valid configuration.
    """
    file = Path(path)
    try:
        text = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the configuration: {exc.strerror}") from None
    return parse_config(text, str(file))


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def read_secret(variable: str, *, what: str = "API key") -> str:
    """Read a secret from the environment variable `variable`, without surrounding whitespace.

    Secrets often come from files that end with a newline (`echo`, Kubernetes secrets);
    sent as it is, such a key makes an invalid HTTP header whose error quotes it. So the
    value is stripped, and one that still contains a control character is refused.

    Raises:
      ConfigError: naming the variable (never a value) when it is unset or blank, or
        contains control characters.
    """
    value = os.environ.get(variable, "").strip()
    if not value:
        raise ConfigError(f"the {what} environment variable `{variable}` is not set")
    if _CONTROL.search(value):
        raise ConfigError(
            f"the {what} environment variable `{variable}` contains control characters"
        )
    return value
