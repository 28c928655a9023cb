"""Percentiles and latency summaries, the way load generators report them.

Percentiles are nearest-rank: the p-th percentile is the smallest sample that at least p %
of the samples do not exceed. It is always one of the samples (wrk and HdrHistogram report
the same kind of value), so a p99 never invents a latency that no request had.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

__all__ = ["Summary", "percentile", "summarize"]


def percentile(ordered: Sequence[float], p: float) -> float:
    """The nearest-rank `p`-th percentile of samples sorted in ascending order.

    Args:
      ordered: the samples, sorted ascending; not empty.
      p: the percentile, from 0 to 100 (0 gives the smallest sample).

    Raises:
      ValueError: no samples, or `p` outside 0-100.
    """
    if not ordered:
        raise ValueError("no samples")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is outside 0-100")
    rank = math.ceil(p / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


class Summary(msgspec.Struct, frozen=True):
    """Latency percentiles of one run, in milliseconds.

    Attributes:
      count: how many samples.
      p50, p90, p99: nearest-rank percentiles.
      max: the largest sample.
      mean: the arithmetic mean.
    """

    count: int
    p50: float
    p90: float
    p99: float
    max: float
    mean: float


def summarize(seconds: Sequence[float]) -> Summary | None:
    """The percentiles of latencies given in seconds, in milliseconds; None without samples."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    return Summary(
        count=len(ordered),
        p50=percentile(ordered, 50) * 1e3,
        p90=percentile(ordered, 90) * 1e3,
        p99=percentile(ordered, 99) * 1e3,
        max=ordered[-1] * 1e3,
        mean=math.fsum(ordered) / len(ordered) * 1e3,
    )
