"""Every Python code block in the README and the guides runs, so the docs cannot rot."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


@pytest.mark.parametrize("path", [d for d in DOCS if python_blocks(d)], ids=lambda p: p.name)
def test_code_blocks_run(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocks of one file run in order as one module, like a reader would paste them."""
    module = ModuleType(f"docs_{path.stem.replace('-', '_')}")
    # Registered like an imported module, so that msgspec and typing can resolve the
    # string annotations of the classes the blocks define.
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for number, block in enumerate(python_blocks(path), 1):
        code = compile(block, f"{path.name}[block {number}]", "exec")
        exec(code, module.__dict__)
