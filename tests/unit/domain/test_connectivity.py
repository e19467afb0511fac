"""Connectivity tiers and the growing-payload rule of the bandwidth measurement."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpupool.domain.connectivity import (
    GROWTH,
    MAX_PROBE_BYTES,
    MIN_PROBE_BYTES,
    TARGET_SECONDS,
    connectivity_tier,
    mbit_per_second,
    next_probe_size,
)


@pytest.mark.parametrize(
    ("up", "down", "tier"),
    [
        (None, 500.0, 0),
        (500.0, None, 0),
        (9.99, 1000.0, 0),
        (10.0, 10.0, 1),
        (99.0, 5000.0, 1),  # a fast download does not lift a slow upload
        (5000.0, 99.0, 1),
        (100.0, 100.0, 2),
        (940.0, 940.0, 2),  # gigabit Ethernet's real TCP goodput is just under 1000
        (1000.0, 2500.0, 3),
        (10_000.0, 25_000.0, 4),
    ],
)
def test_the_tier_follows_the_slower_direction(
    up: float | None, down: float | None, tier: int
) -> None:
    assert connectivity_tier(up, down) == tier


@given(st.floats(0.01, 1e5), st.floats(0.01, 1e5), st.floats(1.0, 10.0))
def test_a_faster_link_never_gets_a_lower_tier(up: float, down: float, factor: float) -> None:
    assert connectivity_tier(up * factor, down * factor) >= connectivity_tier(up, down)


def test_rates_are_megabits_per_second() -> None:
    assert mbit_per_second(125_000_000, 1.0) == pytest.approx(1000.0)
    assert mbit_per_second(1_250_000, 2.0) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="some time"):
        mbit_per_second(10, 0.0)
    with pytest.raises(ValueError, match="negative"):
        mbit_per_second(-1, 1.0)


def test_a_long_enough_transfer_stands_as_the_measurement() -> None:
    assert next_probe_size(MIN_PROBE_BYTES, TARGET_SECONDS) is None
    assert next_probe_size(MIN_PROBE_BYTES, 3.0) is None
    assert next_probe_size(MAX_PROBE_BYTES, 0.001) is None  # as large as allowed


def test_a_short_transfer_asks_for_a_larger_payload_within_bounds() -> None:
    # 256 KiB in 0.1 s: aim at 0.75 s, i.e. 7.5x, under the 8x growth cap.
    assert next_probe_size(MIN_PROBE_BYTES, 0.1) == int(MIN_PROBE_BYTES * 7.5)
    assert next_probe_size(MIN_PROBE_BYTES, 0.0001) == MIN_PROBE_BYTES * GROWTH
    assert next_probe_size(MAX_PROBE_BYTES // 2, 0.0001) == MAX_PROBE_BYTES
    with pytest.raises(ValueError, match="start at"):
        next_probe_size(1000, 0.1)


@given(st.integers(MIN_PROBE_BYTES, MAX_PROBE_BYTES), st.floats(0.0, 10.0))
def test_sizes_grow_until_the_measurement_is_long_or_large(size: int, seconds: float) -> None:
    nxt = next_probe_size(size, seconds)
    if nxt is None:
        assert seconds >= TARGET_SECONDS or size >= MAX_PROBE_BYTES
    else:
        assert size < nxt <= min(size * GROWTH, MAX_PROBE_BYTES)
