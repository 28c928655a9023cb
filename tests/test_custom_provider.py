"""examples/custom_provider.py runs, and it is the code docs/custom-providers.md shows."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from benchmarks.fake_upstream import fake_text

from .test_docs import ROOT, python_blocks

EXAMPLE = ROOT / "examples" / "custom_provider.py"
GUIDE = ROOT / "docs" / "custom-providers.md"


def definitions(path: Path) -> dict[str, str]:
    """The source of each top-level class, function and assignment, by name.

    Imports, the docstring and what only the script runs (`main`, the `__main__` guard)
    are left out: the guide spreads its imports over its blocks and runs its own demos.
    """
    source = path.read_text()
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            name = node.name
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
        else:
            continue
        if name != "main":
            segment = ast.get_source_segment(source, node)
            assert segment is not None
            found[name] = segment
    return found


def test_the_guide_shows_the_examples_code_word_for_word() -> None:
    guide = "\n".join(python_blocks(GUIDE))
    shown = definitions(EXAMPLE)

    missing = [name for name, code in shown.items() if code not in guide]

    assert missing == []
    assert {"TextCompletionsProvider", "CompletionStream", "upstream_error"} <= set(shown)


def test_the_example_runs_and_prints_both_answers() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )

    assert result.returncode == 0, result.stderr
    text = fake_text(200)  # the fake upstream's answer
    assert f"whole:    {text}\n" in result.stdout
    assert f"streamed: {text}\n" in result.stdout
    assert "completion_tokens=50" in result.stdout
