"""Where a server's time goes: py-spy samples of it under load, summed by package and function.

py-spy (`pip install py-spy`) samples the running process from outside; its `raw` format
is one line per distinct stack, `frame;frame;... count`, innermost frame last. A sample's
*own* time belongs to its innermost frame: summed by package (trio, h11, hypercorn,
httpx, our own packages) and by function, that says which code the CPU was running.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterable

import msgspec

from ._procs import find_tool

__all__ = ["Profile", "find_py_spy", "package_of", "summarize_folded"]

_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>.*?)(?::\d+)?\)$")


def find_py_spy() -> str | None:
    """The py-spy executable, or None when it is not installed."""
    return find_tool("py-spy")


def _location(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip() or "(unknown)", ""
    return match["function"], match["path"]


def package_of(path: str) -> str:
    """The top-level package a frame's source path belongs to (`trio`, `pipeline`, `<stdlib>`).

    py-spy gives paths relative to their `sys.path` entry (`trio/_core/_run.py`,
    `contextlib.py`), or absolute ones for code outside it.
    """
    if not path:
        return "(unknown)"
    if path.startswith("<frozen"):
        return "<stdlib>"
    if path.startswith("<attrs generated "):
        # `<attrs generated methods trio._core._run.CancelStatus>`: the class's package.
        return path.rsplit(" ", 1)[-1].split(".", 1)[0]
    if path.startswith("<"):
        return "<generated>"  # `<string>`: dataclass and namedtuple methods
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif path.startswith("/"):
        # Outside sys.path: name it by its directory.
        return "<stdlib>" if "/lib/python3" in path else path.rsplit("/", 2)[-2]
    top = path.split("/", 1)[0].removesuffix(".py")
    return "<stdlib>" if top in sys.stdlib_module_names else top


class Profile(msgspec.Struct, frozen=True):
    """A sampled profile, summarised.

    Attributes:
      label: what was profiled.
      samples: how many samples.
      by_package: (package, share of samples) for the innermost frame's package, largest
        first.
      by_function: (`function (package)`, share) for the innermost frame, largest first.
      raw: the file the samples are in.
    """

    label: str
    samples: int
    by_package: list[tuple[str, float]]
    by_function: list[tuple[str, float]]
    raw: str


def summarize_folded(lines: Iterable[str], *, label: str, raw: str, top: int = 12) -> Profile:
    """Sum py-spy `raw` (folded) stacks by the innermost frame's package and function."""
    packages: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        function, path = _location(stack.rsplit(";", 1)[-1])
        package = package_of(path)
        packages[package] += samples
        functions[f"{function} ({package})"] += samples

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, n / total) for name, n in counter.most_common(top)] if total else []

    return Profile(label, total, shares(packages), shares(functions), raw)
