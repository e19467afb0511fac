"""Money as integer micro-units (1 unit = 1,000,000 micros), parsed and shown exactly."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from gpupool.domain.errors import InvalidRequest

MICROS = 1_000_000


def to_micros(amount: Decimal | str | int) -> int:
    try:
        value = Decimal(str(amount))
    except InvalidOperation as exc:
        raise InvalidRequest(f"not an amount: {amount!r}") from exc
    if not value.is_finite() or value < 0:
        raise InvalidRequest(f"an amount must be a finite number >= 0, not {amount}")
    micros = value * MICROS
    if micros != micros.to_integral_value():
        raise InvalidRequest(f"amounts have at most 6 decimal places: {amount}")
    return int(micros)


def format_micros(micros: int) -> str:
    """`1500000` → `"1.50"`: at least two decimals, at most six, never a float."""
    text = f"{Decimal(micros) / MICROS:.6f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"
