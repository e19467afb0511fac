"""The anomaly model: per device model, running statistics of what verified leases showed.

For each feature (utilization, memory in use, and watts per utilization point while the
board is busy) the model keeps a count, mean and sum of squared deviations, updated with
Welford's method and merged with Chan's formula, so it learns one lease at a time and
replicas can combine partial models. A lease's score is the share of its samples that are
either beyond `Z_LIMIT` standard deviations on some feature or flagged by the telemetry
rules. Why plain statistics and not River or scikit-learn: docs/timelock.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpupool.domain.errors import InvalidRequest
from gpupool.domain.timelock.samples import Sample
from gpupool.domain.timelock.telemetry import BUSY_UTILIZATION_PCT, Flag

UTILIZATION = "utilization_pct"
MEMORY = "memory_mb"
POWER_PER_UTILIZATION = "power_w_per_pct"
FEATURES = (UTILIZATION, MEMORY, POWER_PER_UTILIZATION)

# A sample is an outlier when some feature is this many standard deviations from the mean:
# under a normal law that happens once in 16,000 samples, so a real share of such samples
# is not bad luck.
Z_LIMIT = 4.0
# Below these counts the model says nothing (score 0, "not enough history"). Samples of one
# lease are strongly correlated, so thirty observations from a single lease would describe
# that lease's workload, not the device model: the model must also have seen a few leases.
MIN_OBSERVATIONS = 30
MIN_LEASES = 5
# The smallest standard deviation a z-score divides by. Workloads differ: a history of only
# full-load leases must not make a lease at half load look forged. Floors are about a tenth
# of each feature's usual range.
STD_FLOOR = {UTILIZATION: 10.0, MEMORY: 2048.0, POWER_PER_UTILIZATION: 0.5}
NOT_ENOUGH_HISTORY = "not enough history"


@dataclass(frozen=True, slots=True)
class FeatureStats:
    """Count, mean and sum of squared deviations (m2) of one feature."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, x: float) -> FeatureStats:
        n = self.n + 1
        delta = x - self.mean
        mean = self.mean + delta / n
        return FeatureStats(n, mean, self.m2 + delta * (x - mean))

    def update_all(self, xs: Iterable[float]) -> FeatureStats:
        stats = self
        for x in xs:
            stats = stats.update(x)
        return stats

    def merge(self, other: FeatureStats) -> FeatureStats:
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * other.n / n
        return FeatureStats(n, mean, self.m2 + other.m2 + delta * delta * self.n * other.n / n)

    @property
    def variance(self) -> float:
        """Sample variance (n - 1 in the denominator); 0.0 below two observations."""
        return self.m2 / (self.n - 1) if self.n > 1 else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(max(self.variance, 0.0))


def features(s: Sample) -> dict[str, float]:
    """The features a sample shows; power per utilization point only while busy, where the
    ratio is steady enough to compare (near idle it divides by almost nothing)."""
    found: dict[str, float] = {}
    if s.utilization_pct is not None:
        found[UTILIZATION] = float(s.utilization_pct)
    if s.memory_mb is not None:
        found[MEMORY] = float(s.memory_mb)
    util, mw = s.utilization_pct, s.power_mw
    if util is not None and mw is not None and util >= BUSY_UTILIZATION_PCT:
        found[POWER_PER_UTILIZATION] = mw / 1000 / util
    return found


@dataclass(frozen=True, slots=True)
class ModelStats:
    """What verified leases of one device model showed; stored as JSON by the caller."""

    model: str
    leases: int = 0
    features: Mapping[str, FeatureStats] = field(default_factory=dict)

    def stats(self, name: str) -> FeatureStats:
        return self.features.get(name, FeatureStats())

    def learn(self, samples: Sequence[Sample]) -> ModelStats:
        """The model after one more verified lease (its samples on one device)."""
        learned = {name: self.stats(name) for name in FEATURES}
        for s in samples:
            for name, x in features(s).items():
                learned[name] = learned[name].update(x)
        return ModelStats(self.model, self.leases + 1, learned)

    def merge(self, other: ModelStats) -> ModelStats:
        if other.model != self.model:
            raise InvalidRequest(f"cannot merge models {self.model!r} and {other.model!r}")
        merged = {name: self.stats(name).merge(other.stats(name)) for name in FEATURES}
        return ModelStats(self.model, self.leases + other.leases, merged)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "leases": self.leases,
            "features": {
                name: {"n": f.n, "mean": f.mean, "m2": f.m2}
                for name, f in sorted(self.features.items())
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelStats:
        try:
            model, leases = data["model"], data["leases"]
            stats = {
                str(name): FeatureStats(int(f["n"]), float(f["mean"]), float(f["m2"]))
                for name, f in data["features"].items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidRequest(f"not a stored anomaly model: {exc}") from exc
        if not isinstance(model, str) or not isinstance(leases, int) or leases < 0:
            raise InvalidRequest("a stored anomaly model needs a model name and a lease count")
        return cls(model, leases, stats)


@dataclass(frozen=True, slots=True)
class AnomalyScore:
    value: float
    reason: str
    samples_scored: int

    @property
    def ppm(self) -> int:
        """The score in parts per million, as certificates carry it."""
        return round(self.value * 1_000_000)


def score(
    model_stats: ModelStats, samples: Sequence[Sample], flags: Iterable[Flag] = ()
) -> AnomalyScore:
    """Share of `samples` (one device's chain) that are outliers or flagged, in [0, 1].

    0 with reason "not enough history" while the model has seen fewer than `MIN_LEASES`
    leases or no feature has `MIN_OBSERVATIONS`: early on, the flags alone speak (the
    certificate counts them separately).
    """
    known = {
        name: f
        for name, f in model_stats.features.items()
        if name in STD_FLOOR and f.n >= MIN_OBSERVATIONS
    }
    if model_stats.leases < MIN_LEASES or not known:
        return AnomalyScore(0.0, NOT_ENOUGH_HISTORY, 0)
    if not samples:
        return AnomalyScore(0.0, "no samples", 0)
    outliers: set[int] = set()
    worst: dict[str, int] = {}
    for s in samples:
        zs = {
            name: abs(x - known[name].mean) / max(known[name].std, STD_FLOOR[name])
            for name, x in features(s).items()
            if name in known
        }
        if zs and max(zs.values()) > Z_LIMIT:
            outliers.add(s.seq)
            top = max(zs, key=lambda name: zs[name])
            worst[top] = worst.get(top, 0) + 1
    flagged = {f.seq for f in flags}
    odd = outliers | flagged
    value = min(1.0, len(odd) / len(samples))
    beyond = ", ".join(f"{name} {count}" for name, count in sorted(worst.items()))
    reason = (
        f"{len(outliers)} of {len(samples)} samples beyond {Z_LIMIT:g} standard deviations"
        f"{f' ({beyond})' if beyond else ''}; {len(flagged)} flagged by telemetry rules"
    )
    return AnomalyScore(value, reason, len(samples))
