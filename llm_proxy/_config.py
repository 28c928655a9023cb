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

import difflib
import os
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import msgspec

from middlewares import (
    CacheConfig,
    ConcurrencyConfig,
    DeploymentConfig,
    HealthConfig,
    KeyConfig,
    LogConfig,
    RateLimitConfig,
    RetryConfig,
    Routing,
    StoreConfig,
    TimeoutConfig,
)
from pipeline import ApiKey, ConfigError, Positive, PositiveInt, Section, section_error
from providers import PROVIDER_KINDS, ProviderConfig

__all__ = [
    "MiddlewareConfig",
    "ModelConfig",
    "ProxyConfig",
    "ServerConfig",
    "inspect_config",
    "key_warnings",
    "load_config",
    "parse_config",
]


class ServerConfig(Section):
    """Where the server listens, and what it allows its clients."""

    host: str = "127.0.0.1"
    """The address to listen on (`llm-proxy serve --host` overrides it)."""
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    """The port to listen on; 0 picks a free one (`--port` overrides it)."""
    max_body_bytes: PositiveInt = 10 * 1024 * 1024
    """The largest request body accepted; a larger one is answered 413."""
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
    """Processes serving on the one port (`--workers` overrides it); more than one needs
    `[store] backend = "redis"` or `allow_per_worker_state`."""
    allow_per_worker_state: bool = False
    """Allow workers > 1 with the memory store (limits and cache then count per worker)."""


class ModelConfig(Section):
    """A model name clients may ask for, and where it goes: one provider, or deployments."""

    name: str
    """The name clients send as `model`."""
    provider: str | None = None
    """The `name` of the `[[providers]]` entry that serves it (one deployment); give this
    or `deployments`."""
    upstream_model: str | None = None
    """The model name sent upstream (unset: the same as `name`); the default of each
    deployment's own."""
    deployments: list[DeploymentConfig] = msgspec.field(default_factory=list)
    """Several upstreams for the model, balanced by `routing` and cooled by `[health]`."""
    routing: Routing = "weighted"
    """How a deployment is picked: `weighted` (at random by weight), `least_busy` (fewest
    requests in flight) or `latency` (lowest recent time to first token, exploring)."""
    fallbacks: list[str] = msgspec.field(default_factory=list)
    """Models to try, in order, when this one fails before its first chunk."""
    requests_per_minute: PositiveInt | None = None
    """Requests per minute to this model over all keys (unset: no limit)."""
    tokens_per_minute: PositiveInt | None = None
    """Tokens per minute to this model over all keys (unset: no limit)."""

    @property
    def upstream(self) -> str:
        return self.upstream_model or self.name

    @property
    def all_deployments(self) -> list[DeploymentConfig]:
        """The deployments, `provider = "x"` being one with the model's own settings."""
        if self.provider is not None:
            return [DeploymentConfig(provider=self.provider, upstream_model=self.upstream)]
        return [
            msgspec.structs.replace(d, upstream_model=d.upstream_model or self.upstream)
            for d in self.deployments
        ]


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
    """A middleware of your own, loaded by import path (`[[middlewares]]`).

    `use` names a class or a factory function, called with `options` as keyword arguments
    to make the middleware, or a middleware function `async def mw(request, ctx,
    call_next)` used as it is. See `docs/writing-middlewares.md`.
    """

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
    """The HTTP server."""
    providers: list[ProviderConfig] = msgspec.field(default_factory=list)
    """The upstream APIs."""
    models: list[ModelConfig] = msgspec.field(default_factory=list)
    """The model names clients may ask for."""
    keys: list[KeyConfig] = msgspec.field(default_factory=list)
    """Client API keys; with none, authentication is off."""
    ratelimit: RateLimitConfig = msgspec.field(default_factory=RateLimitConfig)
    """Requests and tokens per minute."""
    rate_limit: RateLimitConfig | None = None
    """The same section as `[ratelimit]`, under its better name; give one of the two."""
    concurrency: ConcurrencyConfig = msgspec.field(default_factory=ConcurrencyConfig)
    """Requests in flight."""
    cache: CacheConfig = msgspec.field(default_factory=CacheConfig)
    """The answer cache."""
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    """Retries before the first chunk."""
    timeouts: TimeoutConfig = msgspec.field(default_factory=TimeoutConfig)
    """Time limits on each request."""
    timeout: TimeoutConfig | None = None
    """The same section as `[timeouts]`, under the singular name the other sections use;
    give one of the two."""
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    """Where limits, concurrency slots, circuits and the cache keep their state."""
    health: HealthConfig = msgspec.field(default_factory=HealthConfig)
    """Circuit breaking of deployments."""
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    """The access log."""
    middlewares: list[MiddlewareConfig] = msgspec.field(default_factory=list)
    """Middlewares of your own."""

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
            if (model.provider is None) == (not model.deployments):
                fail(f"models[{i}]", "give exactly one of `provider` and `deployments`")
            elif model.provider is not None and model.provider not in providers:
                fail(f"models[{i}].provider", f"no provider named `{model.provider}`")
            seen: set[tuple[str, str]] = set()
            for j, deployment in enumerate(model.deployments):
                if deployment.provider not in providers:
                    fail(
                        f"models[{i}].deployments[{j}].provider",
                        f"no provider named `{deployment.provider}`",
                    )
                target = (deployment.provider, deployment.upstream_model or model.upstream)
                if target in seen:
                    fail(
                        f"models[{i}].deployments[{j}]",
                        f"deployment `{target[0]}/{target[1]}` is listed twice",
                    )
                seen.add(target)
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
      ConfigError: the TOML is malformed, keys are unknown or have a wrong type or value,
        or references point nowhere. The message has one line per problem, each naming
        `source` and the key path; `param` is the first problem's path.
    """
    config, problems = inspect_config(text)
    if config is None or problems:
        raise _joined(source, problems)
    return config


def inspect_config(text: str | bytes) -> tuple[ProxyConfig | None, list[ConfigError]]:
    """Decode a TOML configuration and find every problem in it, not just the first.

    The TOML is decoded to plain data first, then each section and each list item is
    checked on its own, so one run reports every unknown key (with the closest valid one
    as a suggestion), every wrong type and value. When the structure is sound, the
    references between sections are checked as well (`ProxyConfig.problems`).

    Returns:
      The configuration (None when its structure is broken) and the problems, each a
      `ConfigError` whose `param` is its key path.
    """
    try:
        data = msgspec.toml.decode(text)
    except msgspec.DecodeError as exc:
        return None, [ConfigError(f"not valid TOML: {exc}")]
    problems = _struct_problems(data, ProxyConfig, "")
    if problems:
        return None, problems
    try:
        config = msgspec.convert(data, ProxyConfig)
    except msgspec.ValidationError as exc:
        return None, [section_error(exc)]
    return config, config.problems()


def _struct_problems(data: Any, cls: type[msgspec.Struct], path: str) -> list[ConfigError]:
    """Every problem of one table against the section struct `cls`."""
    if not isinstance(data, dict):
        what = "a table" if path else "a TOML document"
        return [_problem(path, f"Expected {what}, got `{_toml_type(data)}`")]
    fields = {field.encode_name: field for field in msgspec.structs.fields(cls)}
    found = [_unknown(key, fields, _join(path, key)) for key in data if key not in fields]
    for name, field in fields.items():
        if name in data:
            found.extend(_value_problems(data[name], field.type, _join(path, name)))
        elif field.required:
            found.append(_problem(_join(path, name), f"missing required key `{name}`"))
    if not found:
        # What the fields cannot show alone: checks across them (`__post_init__`).
        try:
            msgspec.convert(data, cls)
        except msgspec.ValidationError as exc:
            found.append(section_error(exc, path))
    return found


def _value_problems(value: Any, annotation: Any, path: str) -> list[ConfigError]:
    """The problems of one value: a nested section or list of them item by item."""
    struct = _section_type(annotation)
    if struct is not None and isinstance(value, dict):
        return _struct_problems(value, struct, path)
    if get_origin(annotation) is list and isinstance(value, list):
        item = _section_type(get_args(annotation)[0])
        if item is not None:
            return [
                problem
                for i, entry in enumerate(value)
                for problem in _struct_problems(entry, item, f"{path}[{i}]")
            ]
    try:
        msgspec.convert(value, annotation)
    except msgspec.ValidationError as exc:
        return [section_error(exc, path)]
    return []


def _section_type(annotation: Any) -> type[msgspec.Struct] | None:
    """The struct an annotation names (`ServerConfig`, `TimeoutConfig | None`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return annotation
    if get_origin(annotation) in (Union, UnionType):
        structs = [_section_type(arg) for arg in get_args(annotation)]
        found = [struct for struct in structs if struct is not None]
        return found[0] if len(found) == 1 else None
    return None


def _unknown(key: str, fields: dict[str, Any], path: str) -> ConfigError:
    close = difflib.get_close_matches(key, fields, n=1)
    hint = f" (did you mean `{close[0]}`?)" if close else ""
    return _problem(path, f"unknown key `{key}`{hint}")


def _problem(path: str, message: str) -> ConfigError:
    suffix = f" - at `{path}`" if path else ""
    return ConfigError(f"{message}{suffix}", param=path or None)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _toml_type(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, bool):
        return "bool"
    return type(value).__name__


def key_warnings(config: ProxyConfig) -> list[str]:
    """Warnings about a configuration that is valid but likely not what was meant.

    Today: a `[[keys]]` model glob that matches no configured model (a typo leaves the
    key unable to use the model it was meant for).
    """
    names = [model.name for model in config.models]
    warnings = []
    for i, key in enumerate(config.keys):
        for j, pattern in enumerate(key.models):
            if not ApiKey(id=key.id, models=(pattern,)).allowed_models(names):
                warnings.append(
                    f"key `{key.id}`: `{pattern}` matches no configured model - at "
                    f"`keys[{i}].models[{j}]`"
                )
    return warnings


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
