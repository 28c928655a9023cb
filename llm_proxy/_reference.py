"""The configuration reference, `docs/configuration.md`, generated from the config structs.

    python -m llm_proxy._reference docs/configuration.md

Every key's type and default come from the structs themselves (`msgspec.inspect`), and its
meaning from the docstring written right after the field in the class body, read from the
source with `ast`. A test regenerates the file and compares, so it cannot drift.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import json
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
from msgspec import inspect as mi

from providers import PROVIDER_OPTIONS

from ._config import BUILTIN_MIDDLEWARES, ProxyConfig

__all__ = ["field_docs", "main", "reference", "undocumented"]

COMMAND = "python -m llm_proxy._reference docs/configuration.md"
"""The command that regenerates the reference."""

_INTRO = f"""\
# Configuration reference

<!-- Generated from the configuration structs by
`{COMMAND}`:
edit their docstrings, not this file (a test fails when the two differ). -->

`llm-proxy serve --config FILE` and `llm-proxy check-config FILE` read a TOML file made of
the sections below. Every section and every key is optional unless it says *required*; an
unknown key is an error, reported with the closest valid key (`did you mean ...?`), and
`llm-proxy check-config` lists every problem of a file in one run. Secrets are never in the
file: keys such as `api_key_env` name the environment variable that holds them.

A `number` may be written as an integer or a decimal; *unset* means the key is left out.
"""


def field_docs(cls: type[msgspec.Struct]) -> dict[str, str]:
    """Each field's docstring (the string right after it in the class body), by field name.

    Fields inherited from other structs are included; a field without one is left out.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, msgspec.Struct)):
            continue
        if klass is msgspec.Struct or klass.__module__ == "msgspec":
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body if isinstance(tree.body[0], ast.ClassDef) else []
        for field, after in itertools.pairwise(body):
            if (
                isinstance(field, ast.AnnAssign)
                and isinstance(field.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[field.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def _sections() -> Iterator[tuple[str, str, type[msgspec.Struct] | None]]:
    """(heading, the file's field docstring, its struct or None for an alias) per section."""
    docs = field_docs(ProxyConfig)
    seen: set[type[msgspec.Struct]] = set()
    for field in _fields(ProxyConfig):
        kind = _without_none(field.type)
        many = isinstance(kind, mi.ListType)
        section = kind.item_type if many else kind
        assert isinstance(section, mi.StructType), "every top-level key is a section"
        struct = section.cls
        heading = f"[[{field.encode_name}]]" if many else f"[{field.encode_name}]"
        yield heading, docs.get(field.name, ""), None if struct in seen else struct
        seen.add(struct)


def _structs() -> Iterator[type[msgspec.Struct]]:
    """Every struct whose fields the reference documents."""
    yield ProxyConfig
    for _, _, struct in _sections():
        if struct is not None:
            yield struct
    yield from PROVIDER_OPTIONS.values()


def undocumented() -> list[str]:
    """`Struct.field` for every documented field that has no docstring."""
    missing = []
    for struct in _structs():
        docs = field_docs(struct)
        fields = msgspec.structs.fields(struct)
        missing += [f"{struct.__name__}.{f.name}" for f in fields if f.name not in docs]
    return missing


def reference() -> str:
    """The reference as Markdown: a heading and a table of keys per section."""
    parts = [_INTRO]
    for heading, doc, struct in _sections():
        # The section's own docstring says more than the file's one line about it.
        summary = _summary(struct) if struct is not None else ""
        parts.append(f"## `{heading}`\n\n{summary or doc}\n")
        if struct is None:
            continue
        parts.append(_table(struct))
        if heading == "[[providers]]":
            parts.append(_options_by_kind())
        if heading == "[[middlewares]]":
            names = ", ".join(f"`{name}`" for name in BUILTIN_MIDDLEWARES)
            parts.append(
                f"`after` and `before` name one of the built-in middlewares, in their order: "
                f"{names}. A position names a built-in whether or not the configuration turns "
                "it on; plugins at one position keep the order of the file.\n"
            )
    return "\n".join(parts)


def _summary(struct: type[msgspec.Struct]) -> str:
    """The struct's own docstring, not one it inherits."""
    return inspect.cleandoc(struct.__doc__) if struct.__doc__ else ""


def _options_by_kind() -> str:
    parts = [
        "### `options` of each kind\n",
        'A kind of your own (`kind = "package.module:Class"`) reads `options` in its '
        "`from_config(section)`; the built-in kinds understand these:\n",
    ]
    for kind, struct in PROVIDER_OPTIONS.items():
        parts.append(f'#### `kind = "{kind}"`\n')
        if msgspec.structs.fields(struct):
            parts.append(_table(struct))
        else:
            parts.append("No options.\n")
    return "\n".join(parts)


def _table(struct: type[msgspec.Struct]) -> str:
    docs = field_docs(struct)
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for field in _fields(struct):
        cells = [
            f"`{field.encode_name}`",
            _type(field.type),
            _default(field),
            docs.get(field.name, ""),
        ]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows) + "\n"


def _fields(struct: type[msgspec.Struct]) -> tuple[mi.Field, ...]:
    info = mi.type_info(struct)
    assert isinstance(info, mi.StructType)
    return info.fields


def _without_none(kind: mi.Type) -> Any:
    if isinstance(kind, mi.UnionType):
        rest = [t for t in kind.types if not isinstance(t, mi.NoneType)]
        if len(rest) == 1:
            return rest[0]
    return kind


def _type(kind: mi.Type) -> str:
    kind = _without_none(kind)
    if isinstance(kind, mi.BoolType):
        return "boolean"
    if isinstance(kind, mi.IntType | mi.FloatType):
        name = "integer" if isinstance(kind, mi.IntType) else "number"
        bounds = [
            f"{symbol} {value:g}"
            for symbol, value in ((">", kind.gt), (">=", kind.ge), ("<", kind.lt), ("<=", kind.le))
            if value is not None
        ]
        return f"{name} {', '.join(bounds)}" if bounds else name
    if isinstance(kind, mi.StrType):
        return f"string matching `{kind.pattern}`" if kind.pattern else "string"
    if isinstance(kind, mi.LiteralType):
        return "one of " + ", ".join(f"`{json.dumps(value)}`" for value in kind.values)
    if isinstance(kind, mi.ListType):
        return f"array of {_plural(_type(kind.item_type))}"
    if isinstance(kind, mi.DictType):
        if isinstance(kind.value_type, mi.AnyType):
            return "table"
        return f"table of {_plural(_type(kind.value_type))}"
    if isinstance(kind, mi.StructType):
        return "table"
    return "any"


def _plural(name: str) -> str:
    first, _, rest = name.partition(" ")
    return f"{first}s {rest}".rstrip()


def _default(field: mi.Field) -> str:
    if field.required:
        return "*required*"
    if field.default_factory is not msgspec.NODEFAULT:
        value = field.default_factory()
    else:
        value = field.default
    if value is None:
        return "*unset*"
    return f"`{_toml(value)}`"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return repr(value)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the reference to the file named on the command line, or to stdout."""
    args = sys.argv[1:] if argv is None else list(argv)
    text = reference()
    if args:
        Path(args[0]).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
