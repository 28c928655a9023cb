"""The configuration file's schema, composed of the sections each layer defines.

Each middleware and provider defines its own section beside its code (`[cache]` is
`middlewares.CacheConfig`, `[[providers]]` is `providers.ProviderConfig`) and reads it in its
own `from_config`; this module puts them together as `ProxyConfig`, adds the application's
own sections (`[server]`, `[[models]]`, `[[middlewares]]`), and checks the references
between them. A typo or a wrong type is a `ConfigError` that names the file and the key path
(`proxy.toml: Expected `int`, got `str` - at `providers[0].timeout``). Secrets never appear
in the file: API keys are read from the environment variables it names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import msgspec

from middlewares import (
    CacheConfig,
    ConcurrencyConfig,
    KeyConfig,
    LogConfig,
    RateLimitConfig,
    RetryConfig,
    StoreConfig,
    TimeoutConfig,
)
from pipeline import ConfigError, Positive, PositiveInt, Section, section_error
from providers import PROVIDER_KINDS, ProviderConfig

__all__ = [
    "MiddlewareConfig",
    "ModelConfig",
    "ProxyConfig",
    "ServerConfig",
    "load_config",
    "parse_config",
]


class ServerConfig(Section):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    max_body_bytes: PositiveInt = 10 * 1024 * 1024
    read_timeout: Positive = 30.0
    """Seconds a client may take to send a request's head, and then its body, however they
    trickle in (a slow client gets a 408)."""
    keep_alive_timeout: Positive = 5.0
    """Seconds an idle keep-alive connection stays open between requests."""
    grace_period: Positive = 10.0
    """Seconds running streams may take to finish after SIGINT/SIGTERM."""
    write_timeout: Positive = 30.0
    """Seconds a client that stops reading may hold an answer up; until then its stream
    makes the upstream wait, and after it the connection is closed."""
    max_connections: PositiveInt = 10_000
    """Client connections served at once; more wait in the listen backlog."""
    max_header_bytes: PositiveInt = 64 * 1024
    """Largest request head (request line and headers); a larger one gets a 431."""
    max_headers: PositiveInt = 100
    """Most request headers; more get a 431."""
    tls_certificate: str | None = None
    """A PEM certificate chain: serve HTTPS (needs `tls_key`)."""
    tls_key: str | None = None
    """The PEM private key of `tls_certificate`."""
    workers: PositiveInt = 1
    allow_per_worker_state: bool = False
    """Allow workers > 1 with the memory store (limits and cache then count per worker)."""


class ModelConfig(Section):
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


BUILTIN_MIDDLEWARES = (
    "access_log",
    "metrics",
    "deadline",
    "auth",
    "rate_limit",
    "concurrency",
    "cache",
    "retry",
    "fallback",
    "timeout",
)
"""The built-in middlewares in their order, by the names `[[middlewares]]` positions use."""


class MiddlewareConfig(Section):
    """A middleware of your own, loaded by import path (`[[middlewares]]`)."""

    use: str
    """`package.module:name` of a class or function; called with `options` as keyword
    arguments, it returns the middleware."""
    after: str | None = None
    """Run just after this built-in middleware (it sees the request after it)."""
    before: str | None = None
    """Run just before this built-in middleware. Without `after` or `before` the middleware
    runs last, just before the provider."""
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    """Keyword arguments for `use`."""


class ProxyConfig(Section):
    """The whole configuration file."""

    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    providers: list[ProviderConfig] = msgspec.field(default_factory=list)
    models: list[ModelConfig] = msgspec.field(default_factory=list)
    keys: list[KeyConfig] = msgspec.field(default_factory=list)
    ratelimit: RateLimitConfig = msgspec.field(default_factory=RateLimitConfig)
    rate_limit: RateLimitConfig | None = None
    """The same section as `[ratelimit]`, under its better name; give one of the two."""
    concurrency: ConcurrencyConfig = msgspec.field(default_factory=ConcurrencyConfig)
    cache: CacheConfig = msgspec.field(default_factory=CacheConfig)
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    timeouts: TimeoutConfig = msgspec.field(default_factory=TimeoutConfig)
    timeout: TimeoutConfig | None = None
    """The same section as `[timeouts]`, under the singular name the other sections use;
    give one of the two."""
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    middlewares: list[MiddlewareConfig] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        # Fold each alias into the section the code reads, so there is one place to look.
        if self.rate_limit is not None:
            if self.ratelimit != RateLimitConfig():
                raise ValueError("give `[rate_limit]` or `[ratelimit]`, not both")
            self.ratelimit = self.rate_limit
            self.rate_limit = None
        if self.timeout is not None:
            if self.timeouts != TimeoutConfig():
                raise ValueError("give `[timeout]` or `[timeouts]`, not both")
            self.timeouts = self.timeout
            self.timeout = None

    def check(self, source: str = "config") -> None:
        """Check references between sections.

        Raises:
          ConfigError: naming `source` and the key path of every problem, one a line (the
            first one's path is `param`).
        """
        problems = self.problems()
        if problems:
            raise _joined(source, problems)

    def problems(self) -> list[ConfigError]:
        """Every broken reference between sections, each naming its key path."""
        found: list[ConfigError] = []

        def fail(path: str, message: str) -> None:
            found.append(ConfigError(f"{message} - at `{path}`", param=path))

        providers: set[str] = set()
        for i, provider in enumerate(self.providers):
            if provider.name in providers:
                fail(f"providers[{i}].name", f"duplicate provider `{provider.name}`")
            providers.add(provider.name)
            plugin = ":" in provider.kind
            if not plugin and provider.kind not in PROVIDER_KINDS:
                kinds = ", ".join(PROVIDER_KINDS)
                fail(
                    f"providers[{i}].kind",
                    f"unknown kind `{provider.kind}` (one of: {kinds}, or an import path "
                    "`package.module:Class`)",
                )
            elif not plugin and provider.kind != "mock" and not provider.base_url:
                fail(f"providers[{i}].base_url", f"a `{provider.kind}` provider needs one")
        models: set[str] = set()
        for i, model in enumerate(self.models):
            if model.name in models:
                fail(f"models[{i}].name", f"duplicate model `{model.name}`")
            models.add(model.name)
            if model.provider not in providers:
                fail(f"models[{i}].provider", f"no provider named `{model.provider}`")
        for i, model in enumerate(self.models):
            for j, fallback in enumerate(model.fallbacks):
                if fallback not in models:
                    fail(f"models[{i}].fallbacks[{j}]", f"no model named `{fallback}`")
                elif fallback == model.name:
                    fail(f"models[{i}].fallbacks[{j}]", "a model cannot fall back to itself")
        ids: set[str] = set()
        for i, key in enumerate(self.keys):
            if key.id in ids:
                fail(f"keys[{i}].id", f"duplicate key id `{key.id}`")
            ids.add(key.id)
            if (key.key_env is None) == (key.key_sha256 is None):
                fail(f"keys[{i}]", "give exactly one of `key_env` and `key_sha256`")
        for i, entry in enumerate(self.middlewares):
            for position in ("after", "before"):
                name = getattr(entry, position)
                if name is not None and name not in BUILTIN_MIDDLEWARES:
                    valid = ", ".join(BUILTIN_MIDDLEWARES)
                    fail(
                        f"middlewares[{i}].{position}",
                        f"no built-in middleware `{name}` (one of: {valid})",
                    )
        return found


def _joined(source: str, problems: list[ConfigError]) -> ConfigError:
    """One error for several problems: a line each, every line naming `source`."""
    lines = "\n".join(f"{source}: {problem.message}" for problem in problems)
    return ConfigError(lines, param=problems[0].param)


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
        error = section_error(exc)
        raise ConfigError(f"{source}: {error.message}", param=error.param) from None
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
