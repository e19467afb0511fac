"""The anomaly model: per device model, running statistics of what verified leases showed,
starting from priors that the board's physics gives.

For each feature (utilization, memory in use, watts per utilization point while the board is
busy, and how far temperature and memory move from one sample to the next) the model keeps
a count, mean and sum of squared deviations, updated with Welford's method and merged with
Chan's formula, so it learns one lease at a time and replicas can combine partial models.

Only the features whose honest range the board's physics bounds are scored (`SCORED`):
what the renter runs is not the supplier's doing. A GPU model in the board power table has a
prior for each (`prior`): what its board draws per utilization point, and that a die's
temperature and a job's memory move little in a second. The prior weighs as much as
`PRIOR_LEASES` learned leases, so learned leases refine it and, after a few dozen of them,
outweigh it (`blend`). Without a prior (an unknown GPU) a feature is scored once the model
has learned `MIN_LEASES` leases. A lease's score is the share of its samples beyond
`Z_LIMIT` standard deviations on some scored feature; the telemetry flags are not in it,
they cost pay on their own (payout.py). Why plain statistics and not River or scikit-learn:
docs/timelock.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpupool.domain.errors import InvalidRequest
from gpupool.domain.models import DeviceKind
from gpupool.domain.timelock.samples import Sample
from gpupool.domain.timelock.telemetry import BUSY_UTILIZATION_PCT, DeviceProfile, board_power

UTILIZATION = "utilization_pct"
MEMORY = "memory_mb"
POWER_PER_UTILIZATION = "power_w_per_pct"
TEMPERATURE_STEP = "temperature_step_c"
MEMORY_STEP = "memory_step_mb"
FEATURES = (UTILIZATION, MEMORY, POWER_PER_UTILIZATION, TEMPERATURE_STEP, MEMORY_STEP)
# Only features whose honest range the board sets are scored. Utilization and memory in use
# are the renter's choice: scored, a model that learned five small jobs failed half of the
# honest large ones (benchmarks/telemetry_cheats.py), and the supplier paid for it. They
# are still learned, as a record of how the model is used.
SCORED = (POWER_PER_UTILIZATION, TEMPERATURE_STEP, MEMORY_STEP)

# A sample is an outlier when some feature is this many standard deviations from the mean:
# under a normal law that happens once in 16,000 samples, so a real share of such samples
# is not bad luck.
Z_LIMIT = 4.0
# Below these counts the model says nothing (score 0, "not enough history"). Samples of one
# lease are strongly correlated, so thirty observations from a single lease would describe
# that lease's workload, not the device model: the model must also have seen a few leases.
MIN_OBSERVATIONS = 30
MIN_LEASES = 5
# The smallest standard deviation a z-score divides by, per scored feature. Workloads
# differ: a history of only full-load leases must not make a lease at half load look forged,
# nor a history of steady jobs make a job that reallocates look forged.
STD_FLOOR = {POWER_PER_UTILIZATION: 0.5, TEMPERATURE_STEP: 1.0, MEMORY_STEP: 512.0}
NOT_ENOUGH_HISTORY = "not enough history"

# Steps are taken between consecutive samples at most this far apart (the sampling interval
# is 1 s; a late sample is still a neighbour, a gap is not).
MAX_STEP_GAP_MS = 2_500
# The prior weighs as much as the leases the model used to wait for before it scored at all.
# Learned statistics are weighed by leases, not samples: a lease's samples are strongly
# correlated, so an hour of one workload is one observation of the device model, and two
# leases must not narrow the prior to those two workloads.
PRIOR_LEASES = MIN_LEASES
# What a rented board typically shows while busy: about 85 % utilization at about half of
# its idle-to-maximum power span, and a spread of 15 % of that span around it. Wide on
# purpose: NVML's utilization is the share of time any kernel ran, so honest work lies
# anywhere from a third of the board's power to its maximum.
PRIOR_BUSY_UTILIZATION_PCT = 85
PRIOR_POWER_SHARE = 0.55
PRIOR_POWER_SPREAD = 0.15
# A die's temperature moves by a degree or so a second under a steady load (heatsink and die
# have tens of seconds of thermal time constant); a step of 5 C or more is an outlier.
PRIOR_TEMPERATURE_STEP = (0.5, 1.0)  # mean, standard deviation, C per sample
# A job allocates its memory and keeps it (caching allocators); the prior's deviation is 1 %
# of the board's memory per sample, so only multi-gigabyte moves every second stand out.
PRIOR_MEMORY_STEP_SHARE = 0.01


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


def features(s: Sample, before: Sample | None = None) -> dict[str, float]:
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
    # Steps only on boards with a power sensor (GPUs): a CPU group's memory is the host's,
    # shared and paged, and it has no die sensor of its own.
    if (
        before is not None
        and mw is not None
        and before.power_mw is not None
        and 0 < s.time_ms - before.time_ms <= MAX_STEP_GAP_MS
    ):
        if s.temperature_c is not None and before.temperature_c is not None:
            found[TEMPERATURE_STEP] = float(abs(s.temperature_c - before.temperature_c))
        if s.memory_mb is not None and before.memory_mb is not None:
            found[MEMORY_STEP] = float(abs(s.memory_mb - before.memory_mb))
    return found


def chain_features(samples: Sequence[Sample]) -> list[dict[str, float]]:
    """`features` of each sample of one device's chain (seq order), steps from the one
    before."""
    return [features(s, samples[i - 1] if i else None) for i, s in enumerate(samples)]


def _prior_stats(mean: float, std: float) -> FeatureStats:
    return FeatureStats(2, mean, std * std)  # two observations carry exactly this variance


def blend(prior: FeatureStats, learned: FeatureStats, leases: int) -> FeatureStats:
    """The mixture of the prior (weight `PRIOR_LEASES`) and what `leases` leases taught
    (weight `leases`): its mean, and its variance, which includes how far the two means lie
    apart."""
    if leases <= 0 or learned.n < 2:
        return prior
    w = leases / (leases + PRIOR_LEASES)
    mean = (1 - w) * prior.mean + w * learned.mean
    spread = (learned.mean - prior.mean) ** 2
    variance = (1 - w) * prior.variance + w * learned.variance + w * (1 - w) * spread
    n = prior.n + learned.n
    return FeatureStats(n, mean, variance * (n - 1))


def prior(profile: DeviceProfile) -> ModelStats:
    """What the board's physics says before any lease is learned; no features for a device
    the board power table lacks (CPUs, unknown GPUs)."""
    power = board_power(profile.model) if profile.kind is DeviceKind.GPU else None
    if power is None:
        return ModelStats(profile.model)
    span = power.max_w - power.idle_w
    busy_w = power.idle_w + PRIOR_POWER_SHARE * span
    return ModelStats(
        profile.model,
        0,
        {
            POWER_PER_UTILIZATION: _prior_stats(
                busy_w / PRIOR_BUSY_UTILIZATION_PCT,
                PRIOR_POWER_SPREAD * span / PRIOR_BUSY_UTILIZATION_PCT,
            ),
            TEMPERATURE_STEP: _prior_stats(*PRIOR_TEMPERATURE_STEP),
            MEMORY_STEP: _prior_stats(0.0, PRIOR_MEMORY_STEP_SHARE * profile.memory_mb),
        },
    )


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
        for row in chain_features(samples):
            for name, x in row.items():
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


Bands = Mapping[str, tuple[int, int]]
"""Feature -> (mean, deviation) in millionths, the deviation at least the feature's floor:
what a lease is scored against, in the integers a certificate carries, so that anyone can
recompute the score from the certificate and the samples."""
BAND_SCALE = 1_000_000


@dataclass(frozen=True, slots=True)
class AnomalyScore:
    value: float
    reason: str
    samples_scored: int
    bands: Bands = field(default_factory=dict)

    @property
    def ppm(self) -> int:
        """The score in parts per million, as certificates carry it."""
        return round(self.value * 1_000_000)


def scored_features(model_stats: ModelStats, profile: DeviceProfile) -> dict[str, FeatureStats]:
    """The statistics each feature is scored against: the prior refined by what was learned
    where a prior exists; otherwise what was learned, once there is enough of it."""
    base = prior(profile)
    enough = model_stats.leases >= MIN_LEASES
    known: dict[str, FeatureStats] = {}
    for name in SCORED:
        learned = model_stats.stats(name)
        if base.stats(name).n:
            known[name] = blend(base.stats(name), learned, model_stats.leases)
        elif enough and learned.n >= MIN_OBSERVATIONS:
            known[name] = learned
    return known


def bands(model_stats: ModelStats, profile: DeviceProfile) -> dict[str, tuple[int, int]]:
    """The bands of `scored_features`, rounded to millionths, each deviation floored."""
    return {
        name: (round(f.mean * BAND_SCALE), round(max(f.std, STD_FLOOR[name]) * BAND_SCALE))
        for name, f in scored_features(model_stats, profile).items()
    }


def score(
    model_stats: ModelStats, samples: Sequence[Sample], profile: DeviceProfile
) -> AnomalyScore:
    """Share of `samples` (one device's chain, seq order) that are outliers, in [0, 1].

    0 with reason "not enough history" when no feature can be scored yet: a device without
    priors whose model has seen fewer than `MIN_LEASES` leases or `MIN_OBSERVATIONS` values.
    """
    return score_against(bands(model_stats, profile), samples)


def score_against(scored: Bands, samples: Sequence[Sample]) -> AnomalyScore:
    """`score` from given bands: what the offline verifier recomputes from a certificate."""
    if not scored:
        return AnomalyScore(0.0, NOT_ENOUGH_HISTORY, 0)
    if not samples:
        return AnomalyScore(0.0, "no samples", 0, scored)
    band = {name: (m / BAND_SCALE, d / BAND_SCALE) for name, (m, d) in scored.items()}
    outliers = 0
    worst: dict[str, int] = {}
    for row in chain_features(samples):
        zs = {
            name: abs(x - band[name][0]) / band[name][1] for name, x in row.items() if name in band
        }
        if zs and max(zs.values()) > Z_LIMIT:
            outliers += 1
            top = max(zs, key=lambda name: zs[name])
            worst[top] = worst.get(top, 0) + 1
    beyond = ", ".join(f"{name} {count}" for name, count in sorted(worst.items()))
    reason = (
        f"{outliers} of {len(samples)} samples beyond {Z_LIMIT:g} standard deviations"
        f"{f' ({beyond})' if beyond else ''}"
    )
    return AnomalyScore(outliers / len(samples), reason, len(samples), scored)
