"""The lease-end judgment: per-device results, the verdict, the payout fraction, and the plain
dict of the certificate that the coordinator signs.

Every number that reaches the certificate is an integer (fractions in parts per million,
rounded down), so its canonical JSON, its hash and its signature are unambiguous, and the
offline verifier, recomputing the same integers, compares them exactly.

Verdict rules (lease-wide: coverage is the mean over devices, anomaly and flag penalty the
maximum):
- fail if coverage < 50 %, or anomaly >= 0.5, or a device's flag penalty > 0.5, or a spot
  check was missed or answered wrongly, or more than 10 violations per device-hour;
- pass if coverage >= 95 %, no violation, anomaly < 0.1 and at most 1 flag per 100 samples;
- degraded otherwise.
Payout: 0 on fail; otherwise the mean over devices of each device's share (payout.py), so
one supplier's cheating costs that device's share, not its neighbours'.

A violation is a foreign process the agent says it killed, or a foreign process a sample
lists without such a record: a sample that shows a foreign process on the device proves the
device was not the lease's alone that second, whatever the agent says it did about it. A
spot check the device missed or answered wrongly (the coordinator's record) is one too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gpupool.domain.timelock.anomaly import Bands, ModelStats, score
from gpupool.domain.timelock.chain import ChainHead, HashedSample, head_after
from gpupool.domain.timelock.coverage import PPM, coverage_ppm, covered_ms
from gpupool.domain.timelock.payout import flag_penalty_ppm, flags_by_rule, share_ppm
from gpupool.domain.timelock.samples import Owner, Sample, Violation
from gpupool.domain.timelock.telemetry import DeviceProfile, Flag, check_telemetry

# 2: flags cost pay, listed foreign processes are violations, the anomaly model has priors.
VERSION = 2
HOUR_MS = 3_600_000

# Below half the window proven, the lease was not delivered.
FAIL_COVERAGE_BELOW_PPM = 500_000
# Half the samples beyond four sigma or flagged: the telemetry is not a real device's.
FAIL_ANOMALY_AT_PPM = 500_000
# The guard kills at once, so a few violations are an operator's slip; ten an hour on one
# device is someone using the leased device. The rate is taken over at least one hour per
# device, so one slip does not fail a short lease.
FAIL_VIOLATIONS_PER_DEVICE_HOUR = 10
# A lost sample or a restart costs a few seconds; five percent of an hour is three minutes.
PASS_COVERAGE_AT_PPM = 950_000
PASS_ANOMALY_BELOW_PPM = 100_000
# One flag per hundred samples forgives a sensor glitch but not a pattern.
PASS_FLAGS_PER_SAMPLE_PPM = 10_000
# More than half a device's samples flagged at full weight: its telemetry is not a real
# device's. Half-weight rules alone stay at or under the line (they have honest causes).
FAIL_FLAG_PENALTY_ABOVE_PPM = 500_000


class Verdict(StrEnum):
    PASS = "pass"  # noqa: S105 (a verdict, not a password)
    DEGRADED = "degraded"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class ListedForeign:
    """A foreign process a sample lists with no violation record for it in that sample: the
    guard did not kill it, or the agent does not say so. It counts as a violation."""

    pid: int
    name: str
    seq: int
    time_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "name": self.name,
            "seq": self.seq,
            "time_ms": self.time_ms,
            "reported": False,
        }


@dataclass(frozen=True, slots=True)
class MissedSpotCheck:
    """A spot check the device did not answer in time or answered wrongly: the coordinator's
    own record (docs/challenge.md, "Spot checks"), not something the samples show. It is a
    violation, and fails the lease: the device's presence is not proven."""

    challenge: str
    at_ms: int
    outcome: str  # "failed" (missed or late) or "wrong"
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "spot_check": self.challenge,
            "at_ms": self.at_ms,
            "outcome": self.outcome,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MissedSpotCheck:
        return cls(str(d["spot_check"]), int(d["at_ms"]), str(d["outcome"]), str(d["reason"]))


Violations = tuple[Violation | ListedForeign | MissedSpotCheck, ...]


@dataclass(frozen=True, slots=True)
class DeviceResult:
    device: str
    worker: str
    profile: DeviceProfile
    samples: int
    covered_ms: int
    coverage_ppm: int
    violations: Violations
    flags_count: int
    flag_penalty_ppm: int
    flags_by_rule: Mapping[str, int]
    anomaly_ppm: int
    anomaly_reason: str
    chain_head: ChainHead | None
    anomaly_bands: Bands = field(default_factory=dict)

    @property
    def coverage(self) -> float:
        return self.coverage_ppm / PPM

    @property
    def anomaly(self) -> float:
        return self.anomaly_ppm / PPM

    @property
    def payout_share_ppm(self) -> int:
        """The device's share before the verdict (payout.py), in ppm."""
        return share_ppm(
            self.coverage_ppm, len(self.violations), self.flag_penalty_ppm, self.anomaly_ppm
        )


@dataclass(frozen=True, slots=True)
class Assessment:
    verdict: Verdict
    payout_ppm: int
    coverage_ppm: int
    violations_count: int
    flags_count: int
    anomaly_ppm: int
    reasons: tuple[str, ...]
    flag_penalty_ppm: int = 0

    @property
    def payout_fraction(self) -> float:
        return self.payout_ppm / PPM

    @property
    def coverage(self) -> float:
        return self.coverage_ppm / PPM

    @property
    def anomaly_score(self) -> float:
        return self.anomaly_ppm / PPM


def violations_in(samples: Iterable[Sample]) -> tuple[Violation | ListedForeign, ...]:
    """Each distinct violation the chain records, and each foreign process a sample lists
    without recording it, in chain order. A process listed in many samples counts in each:
    the guard kills at once, so one still there a second later was not killed, just as an
    honest guard records a new violation each time it finds the process again."""
    found: dict[Violation | ListedForeign, None] = {}
    for s in samples:
        found.update(dict.fromkeys(s.violations))
        recorded = {v.pid for v in s.violations}
        for p in s.processes:
            if p.owner is Owner.FOREIGN and p.pid not in recorded:
                found[ListedForeign(p.pid, p.name, s.seq, s.time_ms)] = None
    return tuple(found)


def beacons_used(samples: Iterable[Sample]) -> dict[int, str]:
    return {s.beacon: s.beacon_value for s in samples}


def measure_device(
    device: str,
    worker: str,
    profile: DeviceProfile,
    chain: Sequence[HashedSample],
    *,
    t1_ms: int,
    t_end_ms: int,
    interval_ms: int,
    flags: Sequence[Flag],
    anomaly_ppm: int,
    anomaly_reason: str = "",
    anomaly_bands: Bands | None = None,
    spot_misses: Sequence[MissedSpotCheck] = (),
) -> DeviceResult:
    """A device's result from its accepted chain (seq order) and the judgments made of it,
    the coordinator's missed spot checks among them."""
    samples = [item.sample for item in chain]
    covered = covered_ms((s.time_ms for s in samples), t1_ms, t_end_ms, interval_ms)
    return DeviceResult(
        device=device,
        worker=worker,
        profile=profile,
        samples=len(samples),
        covered_ms=covered,
        coverage_ppm=coverage_ppm(covered, t1_ms, t_end_ms),
        violations=violations_in(samples) + tuple(spot_misses),
        flags_count=len(flags),
        flag_penalty_ppm=flag_penalty_ppm(flags, len(samples)),
        flags_by_rule=flags_by_rule(flags),
        anomaly_ppm=anomaly_ppm,
        anomaly_reason=anomaly_reason,
        chain_head=head_after(chain) if chain else None,
        anomaly_bands=anomaly_bands or {},
    )


def evaluate_device(
    device: str,
    worker: str,
    profile: DeviceProfile,
    chain: Sequence[HashedSample],
    model_stats: ModelStats,
    *,
    t1_ms: int,
    t_end_ms: int,
    interval_ms: int,
    spot_misses: Sequence[MissedSpotCheck] = (),
) -> DeviceResult:
    """`measure_device` with the telemetry flags and the anomaly score computed here."""
    samples = [item.sample for item in chain]
    flags = check_telemetry(samples, profile)
    anomaly = score(model_stats, samples, profile)
    return measure_device(
        device,
        worker,
        profile,
        chain,
        t1_ms=t1_ms,
        t_end_ms=t_end_ms,
        interval_ms=interval_ms,
        flags=flags,
        anomaly_ppm=anomaly.ppm,
        anomaly_reason=anomaly.reason,
        anomaly_bands=anomaly.bands,
        spot_misses=spot_misses,
    )


def assess(devices: Sequence[DeviceResult], t1_ms: int, t_end_ms: int) -> Assessment:
    """The lease's verdict and payout from its devices' results (rules in the module doc)."""
    if not devices:
        return Assessment(Verdict.FAIL, 0, 0, 0, 0, 0, ("the lease has no devices",))
    n = len(devices)
    cover = sum(d.coverage_ppm for d in devices) // n
    anomaly = max(d.anomaly_ppm for d in devices)
    flagged = max(d.flag_penalty_ppm for d in devices)
    violations = sum(len(d.violations) for d in devices)
    missed = sum(isinstance(v, MissedSpotCheck) for d in devices for v in d.violations)
    flags = sum(d.flags_count for d in devices)
    samples = sum(d.samples for d in devices)
    device_hours_ms = n * max(t_end_ms - t1_ms, HOUR_MS)

    failing = [
        (cover < FAIL_COVERAGE_BELOW_PPM, f"coverage {_pct(cover)} is below 50 %"),
        (anomaly >= FAIL_ANOMALY_AT_PPM, f"anomaly {format_ppm(anomaly)} is at least 0.5"),
        (missed > 0, f"{missed} spot check{'' if missed == 1 else 's'} missed or wrong"),
        (
            flagged > FAIL_FLAG_PENALTY_ABOVE_PPM,
            f"flag penalty {format_ppm(flagged)} is above 0.5",
        ),
        (
            violations * HOUR_MS > FAIL_VIOLATIONS_PER_DEVICE_HOUR * device_hours_ms,
            f"{violations} violations are more than 10 per device-hour",
        ),
    ]
    short_of_pass = [
        (cover < PASS_COVERAGE_AT_PPM, f"coverage {_pct(cover)} is below 95 %"),
        (violations > 0, f"{violations} violation{'' if violations == 1 else 's'}"),
        (anomaly >= PASS_ANOMALY_BELOW_PPM, f"anomaly {format_ppm(anomaly)} is at least 0.1"),
        (
            flags * PPM > PASS_FLAGS_PER_SAMPLE_PPM * samples,
            f"{flags} telemetry flags in {samples} samples exceed 1 per 100",
        ),
    ]
    if any(hit for hit, _ in failing):
        reasons = tuple(why for hit, why in failing if hit)
        return Assessment(Verdict.FAIL, 0, cover, violations, flags, anomaly, reasons, flagged)
    reasons = tuple(why for hit, why in short_of_pass if hit)
    verdict = Verdict.DEGRADED if reasons else Verdict.PASS
    payout = sum(d.payout_share_ppm for d in devices) // n
    return Assessment(verdict, payout, cover, violations, flags, anomaly, reasons, flagged)


def certificate_body(
    *,
    lease_id: str,
    cluster_id: str,
    devices: Sequence[DeviceResult],
    t1_ms: int,
    t_end_ms: int,
    beacons: Mapping[int, str],
    interval_ms: int,
    epoch_ms: int,
    max_skew_ms: int,
    issued_at_ms: int,
    head_signatures: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The certificate as plain JSON values (no floats), for the coordinator to sign.

    It names no renter. `head_signatures` (device id -> the agent's signature over its chain
    head hash) let anyone check that the chains are the workers' own.
    """
    a = assess(devices, t1_ms, t_end_ms)
    signatures = head_signatures or {}
    return {
        "version": VERSION,
        "lease": lease_id,
        "cluster": cluster_id,
        "t1_ms": t1_ms,
        "t_end_ms": t_end_ms,
        "interval_ms": interval_ms,
        "epoch_ms": epoch_ms,
        "max_skew_ms": max_skew_ms,
        "issued_at_ms": issued_at_ms,
        "beacons": {str(number): beacons[number] for number in sorted(beacons)},
        "devices": [
            _device_entry(d, signatures.get(d.device), a.verdict)
            for d in sorted(devices, key=lambda d: d.device)
        ],
        "verdict": a.verdict.value,
        "reasons": list(a.reasons),
        "coverage_ppm": a.coverage_ppm,
        "coverage": format_ppm(a.coverage_ppm),
        "violations": a.violations_count,
        "flags": a.flags_count,
        "flag_penalty_ppm": a.flag_penalty_ppm,
        "anomaly_ppm": a.anomaly_ppm,
        "payout_ppm": a.payout_ppm,
        "payout_fraction": format_ppm(a.payout_ppm),
    }


def _device_entry(d: DeviceResult, signature: str | None, verdict: Verdict) -> dict[str, Any]:
    head = d.chain_head
    entry: dict[str, Any] = {
        "device": d.device,
        "worker": d.worker,
        "kind": d.profile.kind.value,
        "model": d.profile.model,
        "memory_mb": d.profile.memory_mb,
        "samples": d.samples,
        "head": None
        if head is None
        else {"seq": head.seq, "hash": head.hash, "time_ms": head.time_ms},
        "covered_ms": d.covered_ms,
        "coverage_ppm": d.coverage_ppm,
        "coverage": format_ppm(d.coverage_ppm),
        "violations": [v.to_dict() for v in d.violations],
        "flags": d.flags_count,
        "flags_by_rule": dict(d.flags_by_rule),
        "flag_penalty_ppm": d.flag_penalty_ppm,
        "anomaly_ppm": d.anomaly_ppm,
        "anomaly_reason": d.anomaly_reason,
        # What the samples were scored against, so that the score can be recomputed.
        "anomaly_bands": {
            name: {"mean_e6": mean, "std_e6": std}
            for name, (mean, std) in sorted(d.anomaly_bands.items())
        },
        # The device's part of the payout; the lease's payout is the mean of these.
        "payout_ppm": 0 if verdict is Verdict.FAIL else d.payout_share_ppm,
    }
    if signature is not None:
        entry["head_signature"] = signature
    return entry


def format_ppm(ppm: int) -> str:
    """Parts per million as a decimal string with six places: 987654 -> "0.987654"."""
    return f"{ppm // PPM}.{ppm % PPM:06d}"


def _pct(ppm: int) -> str:
    """987654 -> "98.76 %", cut rather than rounded, so any verifier prints the same."""
    return f"{ppm // 10_000}.{ppm % 10_000 // 100:02d} %"
