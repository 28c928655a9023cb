"""Every Python code block in the README and the guides runs, so the docs cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


@pytest.mark.parametrize("path", [d for d in DOCS if python_blocks(d)], ids=lambda p: p.name)
def test_code_blocks_run(path: Path) -> None:
    """The blocks of one file run in order in one namespace, like a reader would paste them."""
    namespace: dict[str, object] = {"__name__": f"docs_{path.stem}"}
    for number, block in enumerate(python_blocks(path), 1):
        code = compile(block, f"{path.name}[block {number}]", "exec")
        exec(code, namespace)
