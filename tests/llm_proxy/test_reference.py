"""`docs/configuration.md` is generated from the config structs and cannot drift from them."""

from __future__ import annotations

from pathlib import Path

import msgspec

from llm_proxy._reference import COMMAND, field_docs, main, reference, undocumented
from middlewares import CacheConfig

ROOT = Path(__file__).resolve().parent.parent.parent


def test_the_committed_reference_is_what_the_structs_say() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text()

    assert committed == reference(), f"docs/configuration.md is stale: run `{COMMAND}`"


def test_every_field_of_every_section_has_a_docstring() -> None:
    assert undocumented() == []


def test_a_field_docstring_is_the_string_after_the_field() -> None:
    class Example(msgspec.Struct):
        plain: int = 1
        described: int = 2
        """Two, described
        over two lines."""

    assert field_docs(Example) == {"described": "Two, described over two lines."}
    assert field_docs(CacheConfig)["shared"].startswith("Share entries between keys")


def test_a_row_gives_the_key_its_type_default_and_meaning() -> None:
    text = reference()

    assert (
        "| `port` | integer >= 0, <= 65535 | `8080` | The port to listen on; 0 picks a free one"
    ) in text
    assert "| `name` | string | *required* | The name `[[models]]` entries use" in text
    assert '| `backend` | one of `"memory"`, `"redis"` | `"memory"` |' in text
    assert '| `models` | array of strings | `["*"]` |' in text
    assert '#### `kind = "mock"`' in text
    assert "## `[rate_limit]`\n\nThe same section as `[ratelimit]`" in text


def test_the_command_writes_the_file(tmp_path: Path) -> None:
    target = tmp_path / "configuration.md"

    assert main([str(target)]) == 0
    assert target.read_text() == reference()
