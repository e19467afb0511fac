"""Ledger rules: balanced moves, the mint as the only source, overdrafts refused with the
shortfall, settlement by payout fraction, and stake amounts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpupool.crypto.ledger import GENESIS, seal, verify_journal
from gpupool.domain import ledger as L
from gpupool.domain.errors import InsufficientFunds, InvalidRequest
from gpupool.domain.models import DeviceKind, DeviceSpec
from gpupool.domain.stake import required_stake, slash_amount


def test_a_move_must_balance_and_only_minting_moves_touch_the_mint() -> None:
    with pytest.raises(InvalidRequest):
        L.make_move(L.MoveKind.ESCROW, "k", [("renter:a", -5), ("escrow:l/d", 4)])
    with pytest.raises(InvalidRequest):
        L.transfer(L.MoveKind.SETTLE, "k", L.MINT, "supplier:s", 5)
    with pytest.raises(InvalidRequest):
        L.transfer(L.MoveKind.FUND, "k", "renter:a", L.MINT, 5)  # the mint only gives
    move = L.transfer(L.MoveKind.FUND, "k", L.MINT, "renter:a", 5)
    assert move.minted == 5


def test_an_overdraft_is_refused_with_the_shortfall() -> None:
    move = L.transfer(L.MoveKind.ESCROW, "k", "renter:a", "escrow:l/d", 30)
    with pytest.raises(InsufficientFunds) as caught:
        L.apply({"renter:a": 20}, move)
    assert caught.value.details["shortfall_micros"] == 10
    assert L.apply({"renter:a": 30}, move) == {"renter:a": 0, "escrow:l/d": 30}


def test_settlement_pays_by_time_and_fraction_and_refunds_the_rest() -> None:
    parts = [
        L.DevicePart("d1", "s1", escrowed=300, price_micros_per_hour=100, payout_ppm=500_000),
        L.DevicePart("d2", "s2", escrowed=600, price_micros_per_hour=200, payout_ppm=1_000_000),
    ]
    result = L.settlement("l", "r", parts, ran_ms=7_200, hour_ms=3_600)  # two of three hours
    assert result.paid == {"s1": 100, "s2": 400}
    assert result.refunded == 900 - 500
    balances = L.apply({"escrow:l/d1": 300, "escrow:l/d2": 600}, result.move)
    assert balances["escrow:l/d1"] == balances["escrow:l/d2"] == 0


@given(
    escrowed=st.integers(0, 10**9),
    price=st.integers(0, 10**7),
    ran_ms=st.integers(-10, 10**8),
    ppm=st.integers(0, 1_000_000),
)
def test_earnings_never_exceed_the_escrow(escrowed: int, price: int, ran_ms: int, ppm: int) -> None:
    part = L.DevicePart("d", "s", escrowed, price, ppm)
    assert 0 <= L.earned(part, ran_ms, 3_600_000) <= escrowed


def test_the_journal_breaks_at_any_change() -> None:
    moves = [L.transfer(L.MoveKind.FUND, f"k{i}", L.MINT, "renter:a", i + 1) for i in range(3)]
    entries, prev = [], GENESIS
    for i, move in enumerate(moves, 1):
        entries.append(seal(i, prev, move, 1000 + i))
        prev = entries[-1].hash
    assert verify_journal(entries) is None
    forged = seal(
        2, entries[0].hash, L.transfer(L.MoveKind.FUND, "k1", L.MINT, "renter:a", 9), 1002
    )
    assert (
        verify_journal([entries[0], forged, entries[2]])
        == "entry 3 does not name the hash of entry 2"
    )
    assert verify_journal([entries[0], entries[2]]) == "entry 3 follows entry 1"


def test_stake_grows_with_the_devices_value() -> None:
    cpu = DeviceSpec("cpu0", DeviceKind.CPU, "cpu", 1024, 100_000)
    small = DeviceSpec("gpu0", DeviceKind.GPU, "A", 16 * 1024, 1_000_000)
    big = DeviceSpec("gpu0", DeviceKind.GPU, "H100", 80 * 1024, 2_500_000)
    assert required_stake(cpu) == 5_000_000 + 24 * 100_000
    assert required_stake(cpu) < required_stake(small) < required_stake(big)
    assert required_stake(big) == 5_000_000 + 24 * 2_500_000 + 80 * 250_000
    assert slash_amount(held=100, required=1000, rate_ppm=500_000) == 100  # capped
    assert slash_amount(held=1000, required=1000, rate_ppm=50_000, times=3) == 150
