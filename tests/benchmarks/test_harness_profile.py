"""Summing py-spy's folded stacks by package and function."""

from __future__ import annotations

import pytest

from benchmarks._bench._profile import package_of, summarize_folded

# Three stacks of a `py-spy record --format raw` of the proxy (trimmed at the root).
FOLDED = """\
<module> (pipeline/cli.py:230);run (trio/_core/_run.py:2532);\
_SocketType._nonblocking_helper (trio/_socket.py:1050) 6
<module> (pipeline/cli.py:230);ProxyApp._stream (pipeline/_server.py:380);\
Connection._process_event (h11/_connection.py:318) 3
<module> (pipeline/cli.py:230);ProxyApp._stream (pipeline/_server.py:390) 1

not a stack line
"""


@pytest.mark.parametrize(
    ("path", "package"),
    [
        ("trio/_core/_run.py", "trio"),
        ("pipeline/_server.py", "pipeline"),
        ("contextlib.py", "<stdlib>"),
        ("json/decoder.py", "<stdlib>"),
        ("<frozen runpy>", "<stdlib>"),
        ("<attrs generated methods trio._core._run.CancelStatus>", "trio"),
        ("<string>", "<generated>"),
        ("/srv/app/.venv/lib/python3.11/site-packages/h11/_util.py", "h11"),
        ("/usr/lib/python3.11/asyncio/events.py", "<stdlib>"),
        ("", "(unknown)"),
    ],
)
def test_the_package_of_a_frame(path: str, package: str) -> None:
    assert package_of(path) == package


def test_own_time_goes_to_the_innermost_frame() -> None:
    profile = summarize_folded(FOLDED.splitlines(), label="proxy, stream", raw="p.txt")

    assert profile.samples == 10
    assert profile.by_package == [("trio", 0.6), ("h11", 0.3), ("pipeline", 0.1)]
    assert profile.by_function == [
        ("_SocketType._nonblocking_helper (trio)", 0.6),
        ("Connection._process_event (h11)", 0.3),
        ("ProxyApp._stream (pipeline)", 0.1),
    ]


def test_an_empty_profile_has_no_shares() -> None:
    profile = summarize_folded([], label="idle", raw="p.txt")

    assert (profile.samples, profile.by_package, profile.by_function) == (0, [], [])
