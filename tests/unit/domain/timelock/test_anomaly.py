"""The anomaly model: Welford statistics, merging, storage, and the score."""

from __future__ import annotations

import random
import statistics

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpupool.domain.errors import InvalidRequest
from gpupool.domain.models import DeviceKind
from gpupool.domain.timelock.anomaly import (
    MIN_LEASES,
    NOT_ENOUGH_HISTORY,
    POWER_PER_UTILIZATION,
    PRIOR_LEASES,
    FeatureStats,
    ModelStats,
    prior,
    score,
    scored_features,
)
from gpupool.domain.timelock.samples import Sample
from gpupool.domain.timelock.telemetry import DeviceProfile
from tests.unit.domain.timelock.conftest import (
    CPU,
    H100,
    Reading,
    busy_readings,
    chain_dicts,
    samples,
    second_times,
)

values = st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=200)


def lease(readings: list[Reading]) -> list[Sample]:
    return samples(chain_dicts(second_times(len(readings)), readings))


def trained(leases: int = MIN_LEASES, per_lease: int = 300) -> ModelStats:
    model = ModelStats(H100.model)
    for seed in range(leases):
        model = model.learn(lease(busy_readings(per_lease, seed=seed, util=70 + 5 * seed)))
    return model


@given(xs=values)
def test_welford_matches_statistics_and_numpy(xs: list[float]) -> None:
    stats = FeatureStats().update_all(xs)
    assert stats.n == len(xs)
    assert stats.mean == pytest.approx(statistics.fmean(xs), rel=1e-9, abs=1e-6)
    assert stats.variance == pytest.approx(statistics.variance(xs), rel=1e-6, abs=1e-3)
    assert stats.variance == pytest.approx(float(np.var(xs, ddof=1)), rel=1e-6, abs=1e-3)


@given(a=values, b=values)
def test_merge_equals_updating_with_both_in_turn(a: list[float], b: list[float]) -> None:
    merged = FeatureStats().update_all(a).merge(FeatureStats().update_all(b))
    sequential = FeatureStats().update_all(a + b)
    assert merged.n == sequential.n
    assert merged.mean == pytest.approx(sequential.mean, rel=1e-9, abs=1e-6)
    assert merged.m2 == pytest.approx(sequential.m2, rel=1e-6, abs=1e-3)


def test_merging_with_nothing_changes_nothing() -> None:
    stats = FeatureStats().update_all([1.0, 2.0, 4.0])
    assert stats.merge(FeatureStats()) == stats
    assert FeatureStats().merge(stats) == stats


def test_model_stats_survive_a_round_trip_through_plain_dicts() -> None:
    model = trained(leases=2, per_lease=50)
    assert ModelStats.from_dict(model.to_dict()) == model
    assert model.to_dict()["leases"] == 2


def test_a_stored_model_that_is_not_one_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="not a stored anomaly model"):
        ModelStats.from_dict({"model": "x", "leases": 1, "features": {"u": {"n": 1}}})


def test_models_merge_like_learning_both_histories() -> None:
    a = ModelStats(H100.model).learn(lease(busy_readings(100, seed=1)))
    b = ModelStats(H100.model).learn(lease(busy_readings(100, seed=2)))
    both = a.learn(lease(busy_readings(100, seed=2)))
    merged = a.merge(b)
    assert merged.leases == both.leases == 2
    for name, stats in both.features.items():
        assert merged.stats(name).mean == pytest.approx(stats.mean)
        assert merged.stats(name).m2 == pytest.approx(stats.m2)
    with pytest.raises(InvalidRequest):
        a.merge(ModelStats("NVIDIA L4"))


UNKNOWN_GPU = DeviceProfile(DeviceKind.GPU, "Some Future GPU", 49_152)


def test_without_a_prior_little_history_scores_zero_and_says_so() -> None:
    odd = lease([(100, 70_000, 150_000, 60)] * 10)
    for profile in (UNKNOWN_GPU, CPU):
        few_observations = ModelStats(profile.model).learn(lease(busy_readings(20)))
        few_leases = ModelStats(profile.model)
        for seed in range(MIN_LEASES - 1):
            few_leases = few_leases.learn(lease(busy_readings(300, seed=seed)))
        for model in (few_observations, few_leases):
            result = score(model, odd, profile)
            assert (result.value, result.reason, result.samples_scored) == (
                0.0,
                NOT_ENOUGH_HISTORY,
                0,
            )


def test_a_board_in_the_power_table_is_scored_from_its_first_lease() -> None:
    real = score(ModelStats(H100.model), lease(busy_readings(600, seed=3, util=85)), H100)
    assert real.samples_scored == 600 and real.value < 0.01, real.reason
    # independent draws per second: temperature and memory jump as no board's do
    rng = random.Random(5)
    made_up: list[Reading] = [
        (rng.randint(90, 99), rng.randint(30_000, 40_000), rng.randint(400_000, 600_000),
         rng.randint(60, 70))
        for _ in range(600)
    ]  # fmt: skip
    forged = score(ModelStats(H100.model), lease(made_up), H100)
    assert forged.value > 0.5, forged.reason
    assert "temperature_step_c" in forged.reason and "memory_step_mb" in forged.reason


def test_the_prior_weighs_as_prior_leases_and_learning_outweighs_it() -> None:
    base = prior(H100).stats(POWER_PER_UTILIZATION)
    for leases in (1, PRIOR_LEASES, 4 * PRIOR_LEASES):
        learned = trained(leases=leases)
        refined = scored_features(learned, H100)[POWER_PER_UTILIZATION]
        own = learned.stats(POWER_PER_UTILIZATION)
        w = leases / (leases + PRIOR_LEASES)  # docs/timelock.md: weights by leases
        assert refined.mean == pytest.approx((1 - w) * base.mean + w * own.mean)
        assert refined.std >= min(base.std, own.std)  # a mixture is never narrower
    assert prior(CPU).features == {} and prior(UNKNOWN_GPU).features == {}


def test_two_learned_workloads_do_not_narrow_the_prior_onto_them() -> None:
    # Two leases at 90 % and 0.8 of the board's span: a third at 0.4 of it is honest work.
    two = trained(leases=2)
    lighter: list[Reading] = [
        (u, 30_000, round(70_000 + 6_300 * u * 0.4), 60) for u in (60, 62, 65) * 100
    ]
    assert score(two, lease(lighter), H100).value == 0.0


def test_a_lease_like_the_history_scores_near_zero() -> None:
    result = score(trained(), lease(busy_readings(600, seed=99, util=80)), H100)
    assert result.value < 0.01
    assert result.samples_scored == 600


def test_power_far_below_what_the_model_draws_per_utilization_scores_high() -> None:
    # 150 W at 90 %: clears the telemetry floor, but an H100 doing this work draws ~550 W.
    # Once four times the prior's weight in leases showed this work, the band is narrow enough.
    shifted: list[Reading] = [(90, 30_000, 150_000 + i % 500, 60) for i in range(300)]
    result = score(trained(leases=4 * PRIOR_LEASES), lease(shifted), H100)
    assert result.value > 0.9
    assert "power_w_per_pct" in result.reason
    # the prior alone, or with a few leases, is too wide to call it: honest memory-bound work
    # draws this little
    assert score(ModelStats(H100.model), lease(shifted), H100).value == 0.0
    assert score(trained(), lease(shifted), H100).value == 0.0
