"""Ledger rules: accounts, double-entry moves, balances that never go negative, and what a
lease's booking, extension and settlement move.

Money is integer micro-units (`domain.money`). A move is a set of postings (account,
amount) that sums to zero: what leaves one account arrives in others. The only account that
may go below zero is `mint`, the issuance source: money enters the system only by a move
that takes it from `mint` (funding a renter through the faucet, a validator's reward), so
the sum over every other account changes by exactly what was minted.

Account names are `kind:owner`:

    mint                         issuance source (negative: everything ever minted)
    treasury                     slashed stake that has no harmed renter
    renter:<account>             a renter's spendable balance
    escrow:<lease>/<device>      what a renter paid for one device of one lease
    supplier:<account>           a supplier's earnings and unstaked money
    stake:<supplier>/<device>    stake a supplier locked for one device
    validator:<account>          a validator's rewards

The journal's entries are hash chained (`crypto.ledger`); this module holds no hashing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from gpupool.domain.errors import InsufficientFunds, InvalidRequest
from gpupool.domain.money import format_micros

PPM = 1_000_000
MINT = "mint"
TREASURY = "treasury"


class AccountKind(StrEnum):
    MINT = "mint"
    TREASURY = "treasury"
    RENTER = "renter"
    ESCROW = "escrow"
    SUPPLIER = "supplier"
    STAKE = "stake"
    VALIDATOR = "validator"


class MoveKind(StrEnum):
    FUND = "fund"  # mint -> renter or supplier (the faucet)
    ESCROW = "escrow"  # renter -> escrow at booking
    EXTEND = "extend"  # renter -> escrow when a lease is extended
    SETTLE = "settle"  # escrow -> suppliers and the renter at lease end
    STAKE = "stake"  # supplier -> stake
    UNSTAKE = "unstake"  # stake -> supplier after the cooldown
    SLASH = "slash"  # stake -> treasury or the harmed renter
    REWARD = "reward"  # mint -> validator


MINTING = frozenset({MoveKind.FUND, MoveKind.REWARD})


def renter(account_id: str) -> str:
    return f"renter:{account_id}"


def escrow(lease_id: str, device_id: str) -> str:
    return f"escrow:{lease_id}/{device_id}"


def escrow_prefix(lease_id: str) -> str:
    return f"escrow:{lease_id}/"


def supplier(account_id: str) -> str:
    return f"supplier:{account_id}"


def stake(supplier_id: str, device_id: str) -> str:
    return f"{stake_prefix(supplier_id)}{device_id}"


def stake_prefix(supplier_id: str = "") -> str:
    """The stake accounts of one supplier (of every supplier when none is named)."""
    return f"stake:{supplier_id}/" if supplier_id else "stake:"


def validator(account_id: str) -> str:
    return f"validator:{account_id}"


def kind_of(account: str) -> AccountKind:
    try:
        return AccountKind(account.partition(":")[0])
    except ValueError as exc:
        raise InvalidRequest(f"not a ledger account: {account!r}") from exc


@dataclass(frozen=True, slots=True)
class Posting:
    account: str
    amount: int  # micro-units; positive arrives, negative leaves


@dataclass(frozen=True, slots=True)
class Move:
    """One balanced change of balances, named by an idempotency key: a second move with the
    same key is the same move and is never applied twice."""

    kind: MoveKind
    key: str
    postings: tuple[Posting, ...]
    memo: Mapping[str, str | int] = field(default_factory=dict)

    @property
    def minted(self) -> int:
        return -sum(p.amount for p in self.postings if p.account == MINT)


def make_move(
    kind: MoveKind,
    key: str,
    postings: Iterable[tuple[str, int]],
    memo: Mapping[str, str | int] | None = None,
) -> Move:
    """A move from (account, amount) pairs: amounts on one account are added up, zeros are
    dropped, and the rules hold (integers, sum zero, `mint` only gives, and only in minting
    moves)."""
    if not key or len(key) > 200:
        raise InvalidRequest("a move needs an idempotency key of 1 to 200 characters")
    totals: dict[str, int] = {}
    for account, amount in postings:
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise InvalidRequest(f"amounts are integer micro-units, not {amount!r}")
        kind_of(account)
        totals[account] = totals.get(account, 0) + amount
    lines = tuple(Posting(a, v) for a, v in sorted(totals.items()) if v != 0)
    if sum(p.amount for p in lines) != 0:
        raise InvalidRequest("a move's postings must sum to zero")
    for p in lines:
        if p.account == MINT and (p.amount > 0 or kind not in MINTING):
            raise InvalidRequest(f"a {kind} move cannot touch the mint that way")
    return Move(kind, key, lines, dict(memo or {}))


def transfer(
    kind: MoveKind,
    key: str,
    source: str,
    dest: str,
    amount: int,
    memo: Mapping[str, str | int] | None = None,
) -> Move:
    if amount < 0:
        raise InvalidRequest(f"a transfer moves a positive amount, not {amount}")
    return make_move(kind, key, [(source, -amount), (dest, amount)], memo)


def apply(balances: Mapping[str, int], move: Move) -> dict[str, int]:
    """The new balances of the accounts `move` touches (absent accounts hold 0). Refuses a
    move that would take any account but the mint below zero, naming the shortfall."""
    after: dict[str, int] = {}
    for p in move.postings:
        before = balances.get(p.account, 0)
        value = before + p.amount
        if value < 0 and p.account != MINT:
            raise InsufficientFunds(
                f"{p.account} holds {format_micros(before)}; this needs "
                f"{format_micros(-p.amount)} (short by {format_micros(-value)})",
                account=p.account,
                balance_micros=before,
                needed_micros=-p.amount,
                shortfall_micros=-value,
            )
        after[p.account] = value
    return after


# bookings and settlement ----------------------------------------------------------------


def escrow_moves(
    kind: MoveKind,
    key: str,
    renter_id: str,
    lease_id: str,
    device_prices: Mapping[str, int],
    hours: int,
) -> Move:
    """Booking (or extending by `hours`): each device's price x hours from the renter into
    that device's escrow account."""
    if hours <= 0:
        raise InvalidRequest("hours must be positive")
    postings: list[tuple[str, int]] = []
    for device_id, price in sorted(device_prices.items()):
        postings += [
            (renter(renter_id), -price * hours),
            (escrow(lease_id, device_id), price * hours),
        ]
    return make_move(kind, key, postings, {"lease": lease_id, "hours": hours})


@dataclass(frozen=True, slots=True)
class DevicePart:
    """One device of an ending lease: what its escrow holds and what its certificate says."""

    device_id: str
    supplier_id: str
    escrowed: int
    price_micros_per_hour: int
    payout_ppm: int


def earned(part: DevicePart, ran_ms: int, hour_ms: int) -> int:
    """What the device's supplier earns: its price for the time the lease ran, times the
    certificate's payout fraction for the device, floored to a micro-unit and never more
    than its escrow holds."""
    if ran_ms <= 0 or hour_ms <= 0:
        return 0
    for_time = part.price_micros_per_hour * ran_ms // hour_ms
    return max(0, min(part.escrowed, for_time * part.payout_ppm // PPM))


@dataclass(frozen=True, slots=True)
class Settlement:
    move: Move
    paid: Mapping[str, int]  # supplier account id -> micro-units earned
    refunded: int


def settlement(
    lease_id: str, renter_id: str, parts: Sequence[DevicePart], ran_ms: int, hour_ms: int
) -> Settlement:
    """Empty every escrow account of the lease: each supplier gets what its device earned,
    the renter the rest."""
    postings: list[tuple[str, int]] = []
    paid: dict[str, int] = {}
    refunded = 0
    for part in parts:
        pay = earned(part, ran_ms, hour_ms)
        rest = part.escrowed - pay
        postings += [
            (escrow(lease_id, part.device_id), -part.escrowed),
            (supplier(part.supplier_id), pay),
            (renter(renter_id), rest),
        ]
        paid[part.supplier_id] = paid.get(part.supplier_id, 0) + pay
        refunded += rest
    memo: dict[str, str | int] = {"lease": lease_id, "ran_ms": ran_ms, "refunded": refunded}
    move = make_move(MoveKind.SETTLE, settle_key(lease_id), postings, memo)
    return Settlement(move, paid, refunded)


def settle_key(lease_id: str) -> str:
    return f"settle:{lease_id}"
