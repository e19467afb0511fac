"""Covered time: one interval either side of each sample, clipped to the lease window."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpupool.domain.errors import InvalidRequest
from gpupool.domain.timelock.coverage import (
    coverage,
    coverage_ppm,
    covered_ms,
    uncovered_gaps,
)

INTERVAL = 1_000
T1, T_END = 0, 60_000


def test_samples_every_interval_cover_the_whole_window() -> None:
    times = list(range(0, 60_001, INTERVAL))
    assert covered_ms(times, T1, T_END, INTERVAL) == 60_000
    assert coverage(times, T1, T_END, INTERVAL) == 1.0
    assert uncovered_gaps(times, T1, T_END, INTERVAL) == []


def test_a_30_second_gap_at_1_second_interval_leaves_exactly_28_seconds_uncovered() -> None:
    times = [*range(0, 10_001, INTERVAL), *range(40_000, 60_001, INTERVAL)]
    assert covered_ms(times, T1, T_END, INTERVAL) == 60_000 - 28_000
    assert uncovered_gaps(times, T1, T_END, INTERVAL) == [(11_000, 39_000)]


def test_a_gap_of_two_intervals_costs_nothing() -> None:
    times = [*range(0, 10_001, INTERVAL), *range(12_000, 60_001, INTERVAL)]
    assert covered_ms(times, T1, T_END, INTERVAL) == 60_000


def test_the_window_edges_are_covered_only_within_one_interval_of_a_sample() -> None:
    times = [5_000, 6_000]
    assert covered_ms(times, T1, T_END, INTERVAL) == 3_000  # 4 s .. 7 s
    assert uncovered_gaps(times, T1, T_END, INTERVAL) == [(0, 4_000), (7_000, 60_000)]


def test_samples_outside_the_window_count_only_for_what_reaches_inside() -> None:
    assert covered_ms([-500, 60_500], T1, T_END, INTERVAL) == 500 + 500
    assert covered_ms([-5_000, 65_000], T1, T_END, INTERVAL) == 0


def test_no_samples_cover_nothing() -> None:
    assert covered_ms([], T1, T_END, INTERVAL) == 0
    assert coverage([], T1, T_END, INTERVAL) == 0.0
    assert uncovered_gaps([], T1, T_END, INTERVAL) == [(T1, T_END)]


def test_an_empty_window_has_zero_coverage() -> None:
    assert coverage([10], 10, 10, INTERVAL) == 0.0
    assert coverage_ppm(0, 10, 10) == 0


def test_coverage_in_ppm_rounds_down() -> None:
    assert coverage_ppm(2, 0, 3) == 666_666
    assert coverage_ppm(3, 0, 3) == 1_000_000


def test_unsorted_times_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="sorted"):
        covered_ms([3_000, 1_000], T1, T_END, INTERVAL)


times_in_window = st.lists(st.integers(-5_000, 65_000), max_size=60)


@given(times=times_in_window, interval=st.integers(1, 10_000))
def test_covered_never_exceeds_the_window_and_matches_the_gaps(
    times: list[int], interval: int
) -> None:
    times.sort()
    covered = covered_ms(times, T1, T_END, interval)
    gaps = uncovered_gaps(times, T1, T_END, interval)
    assert 0 <= covered <= T_END - T1
    assert covered + sum(end - start for start, end in gaps) == T_END - T1


@given(times=times_in_window, extra=st.integers(-5_000, 65_000), interval=st.integers(1, 10_000))
def test_adding_a_sample_never_lowers_coverage(times: list[int], extra: int, interval: int) -> None:
    before = covered_ms(sorted(times), T1, T_END, interval)
    after = covered_ms(sorted([*times, extra]), T1, T_END, interval)
    assert after >= before


@given(times=st.lists(st.integers(0, 60_000), max_size=40, unique=True))
def test_covered_equals_a_millisecond_count_of_the_union(times: list[int]) -> None:
    times.sort()
    interval = 700
    brute = {ms for t in times for ms in range(max(t - interval, T1), min(t + interval, T_END))}
    assert covered_ms(times, T1, T_END, interval) == len(brute)
