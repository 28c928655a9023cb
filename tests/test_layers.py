"""The layers import only downwards: each package is imported alone in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def imported_by(package: str) -> set[str]:
    """The top-level modules in `sys.modules` after `import package` in a new interpreter."""
    code = (
        f"import json, sys; import {package}; "
        "print(json.dumps(sorted({name.partition('.')[0] for name in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return set(json.loads(out))


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        (
            "pipeline",
            {
                "middlewares",
                "providers",
                "llm_proxy",
                "benchmarks",
                "hypercorn",
                "httpx",
                "httpx2",
                "httpcore",
                "structlog",
                "coredis",
                "prometheus_client",
            },
        ),
        ("middlewares", {"providers", "llm_proxy", "benchmarks", "hypercorn"}),
        ("providers", {"middlewares", "llm_proxy", "benchmarks", "hypercorn", "structlog"}),
        ("llm_proxy", {"benchmarks"}),
        ("http11", {"pipeline", "middlewares", "providers", "llm_proxy", "benchmarks"}),
    ],
)
def test_a_package_imports_nothing_above_it(package: str, forbidden: set[str]) -> None:
    assert imported_by(package) & forbidden == set()


def test_the_core_needs_only_trio_and_msgspec() -> None:
    modules = imported_by("pipeline")
    third_party = {
        name
        for name in modules - set(sys.stdlib_module_names) - {"pipeline"}
        if not name.startswith("_")
    }
    # trio's own dependencies come with it.
    assert third_party <= {"trio", "msgspec", "attr", "attrs", "sortedcontainers", "idna",
                           "outcome", "sniffio", "exceptiongroup", "typing_extensions"}  # fmt: skip
    assert {"trio", "msgspec"} <= modules
