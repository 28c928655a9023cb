"""Percentiles and latency summaries of the throughput harness."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks._bench._stats import percentile, summarize

samples = st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=200)
ranks = st.floats(min_value=0, max_value=100)


@given(samples, ranks)
def test_a_percentile_is_a_sample_that_splits_them_at_p(values: list[float], p: float) -> None:
    ordered = sorted(values)

    result = percentile(ordered, p)

    assert result in ordered
    # At least p % of the samples are at or below it ...
    assert sum(v <= result for v in ordered) >= p / 100 * len(ordered)
    # ... and it is the smallest sample for which that holds.
    below = [v for v in ordered if v < result]
    assert len(below) < max(p / 100 * len(ordered), 1)


@given(samples, ranks, ranks)
def test_percentiles_grow_with_p(values: list[float], p: float, q: float) -> None:
    ordered = sorted(values)

    low, high = sorted((p, q))

    assert percentile(ordered, low) <= percentile(ordered, high)


@given(samples)
def test_the_ends_are_the_smallest_and_largest_sample(values: list[float]) -> None:
    ordered = sorted(values)

    assert percentile(ordered, 0) == ordered[0]
    assert percentile(ordered, 100) == ordered[-1]


def test_nearest_rank_on_a_known_list() -> None:
    ordered = [float(v) for v in range(1, 101)]  # 1 .. 100

    assert [percentile(ordered, p) for p in (50, 90, 99, 99.5)] == [50.0, 90.0, 99.0, 100.0]
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0


def test_no_samples_or_a_p_out_of_range_is_an_error() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside 0-100"):
        percentile([1.0], 101)


@given(samples)
def test_a_summary_is_in_milliseconds_and_ordered(values: list[float]) -> None:
    summary = summarize(values)

    assert summary is not None
    assert summary.count == len(values)
    assert summary.p50 <= summary.p90 <= summary.p99 <= summary.max
    assert summary.max == max(values) * 1e3
    assert math.isclose(summary.mean, math.fsum(values) / len(values) * 1e3, rel_tol=1e-9)
    # The mean lies between the extremes (up to the rounding of a division).
    assert min(values) * 1e3 * (1 - 1e-12) <= summary.mean <= summary.max * (1 + 1e-12)


def test_no_samples_summarise_to_none() -> None:
    assert summarize([]) is None
