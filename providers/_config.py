"""The `[[providers]]` section: one upstream API, whatever its kind."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from pipeline import ConfigError, Positive, PositiveInt, Section

__all__ = ["NoOptions", "ProviderConfig", "parse_options"]


class ProviderConfig(Section):
    """One upstream API: what it is, where, how to reach it, and its kind's `options`."""

    name: str
    """The name `[[models]]` entries use to pick this provider."""
    kind: str
    """The upstream API (`openai`, `anthropic`, `azure`, `gemini`, `completions`, `mock`),
    or the import path
    of your own provider class (`my_package.llm:MyProvider`), built by its `from_config`."""
    base_url: str | None = None
    """The API's root URL (every kind but `mock` needs one)."""
    api_key_env: str | None = None
    """The environment variable that holds the API key; required unless `base_url` is a
    loopback address."""
    timeout: Positive = 600.0
    """Seconds any single wait on the upstream may take (sending, waiting for a pooled
    connection, each read once a stream has started), and a whole non-streaming answer.
    Not the length of a stream nor its time to the first chunk: `[timeouts]` bound those
    (total and first_token), and `first_token_timeout` below."""
    connect_timeout: Positive = 5.0
    """Seconds to open a connection to the upstream."""
    first_token_timeout: Positive | None = None
    """Seconds a stream may take to produce its first chunk (unset: only `[timeouts]`)."""
    pool_size: PositiveInt = 100
    """Most connections kept open to the upstream."""
    allow_insecure_http: bool = False
    """Allow plain http:// to a host that is not loopback."""
    ca_file: str | None = None
    """A PEM file of certificate authorities to trust besides the system's (a private CA in
    front of a self-hosted model); https upstreams are always verified."""
    health_check_interval: Positive | None = None
    """Seconds between active health checks (the provider's cheap validation request):
    a failed check counts against its deployments' circuits, a good one closes them.
    Unset: no active checks."""
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    """Extra headers sent with every upstream request."""
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    """Settings of the provider's kind (see the options of each kind below)."""


class NoOptions(msgspec.Struct, forbid_unknown_fields=True):
    """A provider kind that takes no `options`."""


OptionsT = TypeVar("OptionsT", bound=msgspec.Struct)


def parse_options(config: ProviderConfig, options_type: type[OptionsT]) -> OptionsT:
    """Validate a provider's `options` table against the settings its kind understands.

    Raises:
      ConfigError: an option is unknown or has the wrong type; the message names the
        provider, and `param` is the option's path below its section (`options.chunks`).
    """
    try:
        return msgspec.convert(config.options, options_type)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).partition(" - at `$")
        param = "options" + path.rstrip("`") if path else "options"
        raise ConfigError(f"provider `{config.name}`: {message}", param=param) from None
