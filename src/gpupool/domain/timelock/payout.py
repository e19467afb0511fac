"""What a device is paid of its lease: its coverage, less what its violations, its telemetry
flags and its anomaly score cost. Each term is a factor in [0, 1] (floored at 0), so the
terms combine by multiplication and no combination pays less than nothing.

    share = coverage
            x max(0, 1 - 0.1 x violations)
            x max(0, 1 - flag penalty)
            x (1 - anomaly)

The flag penalty is the weighted share of flagged samples: each flagged sample costs the
weight of its heaviest flag (a sample is lost at most once, whatever else it shows), and the
sum is divided by the device's samples. A flagged sample so costs its own second of pay,
times the weight, and no more: a sensor glitch in an hour costs 1/3600 of it, while a chain
flagged throughout loses it all (and fails the lease, certificate.py). Weights, and why:
docs/timelock.md ("Verdict and payout").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gpupool.domain.timelock.coverage import PPM
from gpupool.domain.timelock.telemetry import Flag, Rule

# Each violation on a device takes a tenth of that device's pay; ten take it all.
VIOLATION_PENALTY_PPM = 100_000
# Readings that no working board of the model can show (out of bounds), or that were made up
# (a milliwatt reading unchanged for a minute, a window copied from earlier in the chain),
# prove the sample vouches for nothing: the whole sample's pay.
# Power too low for the claimed utilization, and memory held with no lease process listed,
# have honest causes too (a spin-waiting kernel, a process the listing missed), so they cost
# half.
FLAG_WEIGHT_PPM: Mapping[Rule, int] = {
    Rule.BOUNDS: PPM,
    Rule.CONSTANT_VALUES: PPM,
    Rule.REPLAYED_VALUES: PPM,
    Rule.POWER_VS_UTILIZATION: 500_000,
    Rule.MEMORY_WITHOUT_PROCESS: 500_000,
}


def flag_penalty_ppm(flags: Iterable[Flag], samples: int) -> int:
    """The weighted share of flagged samples among `samples`, in ppm (rounded down, at most
    all of them)."""
    if samples <= 0:
        return 0
    heaviest: dict[int, int] = {}
    for f in flags:
        heaviest[f.seq] = max(heaviest.get(f.seq, 0), FLAG_WEIGHT_PPM[f.rule])
    return min(PPM, sum(heaviest.values()) // samples)


def flags_by_rule(flags: Iterable[Flag]) -> dict[str, int]:
    """How many samples each rule flagged, by rule name (only rules that fired)."""
    counts: dict[str, int] = {}
    for f in flags:
        counts[f.rule.value] = counts.get(f.rule.value, 0) + 1
    return dict(sorted(counts.items()))


def share_ppm(coverage_ppm: int, violations: int, flag_penalty: int, anomaly_ppm: int) -> int:
    """The formula of the module doc, in ppm, each product rounded down."""
    share = coverage_ppm
    for cost in (VIOLATION_PENALTY_PPM * violations, flag_penalty, anomaly_ppm):
        share = share * (PPM - min(PPM, max(0, cost))) // PPM
    return share
