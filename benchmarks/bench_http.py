"""The throughput harness: the proxy over HTTP against the fake upstream, with baselines.

The same as `llm-proxy bench` (see `llm-proxy bench --help`): in-process pipeline cost,
then direct to the fake upstream, through a bare hypercorn + httpx relay and through
llm-proxy (minimal and recommended stacks), closed and open loops, whole answers and
streams; results as Markdown, JSON and a plot under `--out` (benchmarks/out/).

    python -m benchmarks.bench_http [--quick] [--compare litellm] [--out DIR]
"""

from __future__ import annotations

import sys

from ._bench._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
