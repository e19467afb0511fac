"""Stake and slashing rules (docs/ledger.md states them with their reasons).

A supplier locks stake per device before the device enters the pool:

    required = BASE + STAKE_HOURS x price per hour + (GPUs) PER_GIB x memory in GiB

so a device that can earn more, or a GPU model with more memory (the dearer models), puts
more at risk. A slash takes `rate x required` from the device's stake account, never more
than it holds. Each rule says where the money goes and whether it counts as fraud; a worker
with FRAUD_LIMIT fraud slashes is blocked.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from gpupool.domain.models import DeviceKind, DeviceSpec

PPM = 1_000_000
UNIT = 1_000_000  # micro-units in one unit of money

BASE_STAKE = 5 * UNIT
STAKE_HOURS = 24
PER_GIB = UNIT // 4  # 0.25 a GiB of GPU memory
UNSTAKE_COOLDOWN_SECONDS = 7 * 24 * 3600.0
FRAUD_LIMIT = 2  # fraud slashes before the worker is blocked
VALIDATOR_REWARD = UNIT  # minted for a validator that catches a cheat


def required_stake(spec: DeviceSpec) -> int:
    """Micro-units a device needs staked to enter the pool (formula in the module doc)."""
    memory = spec.memory_mb * PER_GIB // 1024 if spec.kind is DeviceKind.GPU else 0
    return BASE_STAKE + STAKE_HOURS * spec.price_micros_per_hour + memory


class SlashReason(StrEnum):
    VIOLATION = "violation"  # a foreign process the guard had to kill (per violation)
    FAILED_LEASE = "failed-lease"  # the certificate's verdict on the lease is fail
    WRONG_ANSWER = "wrong-answer"  # a wrong capability-challenge answer
    WRONG_OUTPUT = "wrong-output"  # a protocol-mode job output the majority disagrees with


@dataclass(frozen=True, slots=True)
class SlashRule:
    rate_ppm: int  # of the required stake
    to_renter: bool  # True: to the harmed renter; False: to the treasury
    fraud: bool  # counts toward FRAUD_LIMIT


RULES = {
    SlashReason.VIOLATION: SlashRule(50_000, to_renter=True, fraud=False),
    SlashReason.FAILED_LEASE: SlashRule(200_000, to_renter=True, fraud=True),
    SlashReason.WRONG_ANSWER: SlashRule(500_000, to_renter=False, fraud=True),
    SlashReason.WRONG_OUTPUT: SlashRule(250_000, to_renter=False, fraud=True),
}


def slash_amount(held: int, required: int, rate_ppm: int, times: int = 1) -> int:
    """What one slash takes: `times x rate x required`, capped at what the stake holds."""
    return max(0, min(held, times * required * rate_ppm // PPM))


def cooldown_left(unstake_at: float | None, now: float) -> float | None:
    """Seconds until an asked-for unstake may be paid out (None: not asked for)."""
    if unstake_at is None:
        return None
    return max(0.0, unstake_at - now)


class StakeState(StrEnum):
    """Where a device stands with its stake; only `staked` devices are in the pool."""

    STAKED = "staked"  # holds its required stake, no unstake asked for
    UNSTAKING = "unstaking"  # an unstake is asked for: out of the pool through the cooldown
    SHORT = "short"  # staked once, but holds less than required now (slashed, or price raised)
    NONE = "none"  # never staked


def stake_state(staked: bool, unstake_at: float | None, held: int, required: int) -> StakeState:
    if not staked:
        return StakeState.NONE
    if unstake_at is not None:
        return StakeState.UNSTAKING
    return StakeState.STAKED if held >= required else StakeState.SHORT
