"""Money is exact: integer micro-units in, decimal strings out."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpupool.domain.errors import InvalidRequest
from gpupool.domain.money import format_micros, to_micros


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("1", 1_000_000),
        ("0.25", 250_000),
        ("0.000001", 1),
        ("12.5", 12_500_000),
        ("0", 0),
    ],
)
def test_to_micros(text: str, micros: int) -> None:
    assert to_micros(text) == micros


@pytest.mark.parametrize("bad", ["-1", "0.0000001", "NaN", "Infinity", "one"])
def test_to_micros_refuses(bad: str) -> None:
    with pytest.raises(InvalidRequest):
        to_micros(bad)


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (1_000_000, "1.00"),
        (250_000, "0.25"),
        (1, "0.000001"),
        (0, "0.00"),
        (12_345_678, "12.345678"),
    ],
)
def test_format_micros(micros: int, text: str) -> None:
    assert format_micros(micros) == text


@given(st.integers(0, 10**15))
def test_round_trip(micros: int) -> None:
    assert to_micros(format_micros(micros)) == micros
    assert Decimal(format_micros(micros)) * 1_000_000 == micros
