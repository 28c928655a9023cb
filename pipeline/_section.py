"""What every configuration section shares: strict decoding, value types, secrets.

A middleware or provider defines its own section as a `Section` subclass in its own module
and reads it in its own `from_config(section)`; the application composes those sections
into the configuration file's schema. A section refuses unknown keys, so a misspelt option
is an error rather than a silent default.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, TypeVar

import msgspec

from ._errors import ConfigError
from ._types import _PATH
from ._types import _field_path as field_path

__all__ = [
    "NonNegInt",
    "Positive",
    "PositiveInt",
    "Section",
    "decode_section",
    "read_secret",
    "section_error",
]

Positive = Annotated[float, msgspec.Meta(gt=0)]
"""A number of seconds (or another quantity) above zero."""
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
"""A count of one or more."""
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
"""A count of zero or more."""


class Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A configuration section: unknown keys are errors, fields are given by name."""


S = TypeVar("S", bound=msgspec.Struct)


def decode_section(value: Any, type: type[S], where: str = "") -> S:
    """Convert a decoded TOML table (`options = {...}`) into the section struct `type`.

    Args:
      value: the table, as TOML decoding left it (dicts, lists, scalars).
      type: the section's struct.
      where: the key path of the table, prefixed to the path of a bad field.

    Raises:
      ConfigError: a key is unknown, or has a wrong type or value; `param` is its key path.
    """
    try:
        return msgspec.convert(value, type)
    except msgspec.ValidationError as exc:
        raise section_error(exc, where) from None


def section_error(exc: msgspec.ValidationError, where: str = "") -> ConfigError:
    """A `ConfigError` for a section that fails to decode, naming the key path."""
    message = str(exc)
    path = field_path(message)
    if where and path:
        path = f"{where}{path}" if path.startswith("[") else f"{where}.{path}"
    elif where:
        path = where
    message = _PATH.sub("", message)
    suffix = f" - at `{path}`" if path else ""
    return ConfigError(f"{message}{suffix}", param=path)


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
