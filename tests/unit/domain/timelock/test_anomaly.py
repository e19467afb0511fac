"""The anomaly model: Welford statistics, merging, storage, and the score."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpupool.domain.errors import InvalidRequest
from gpupool.domain.timelock.anomaly import (
    MIN_LEASES,
    NOT_ENOUGH_HISTORY,
    FeatureStats,
    ModelStats,
    score,
)
from gpupool.domain.timelock.samples import Sample
from gpupool.domain.timelock.telemetry import Flag, Rule
from tests.unit.domain.timelock.conftest import (
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


def test_with_little_history_the_score_is_zero_and_says_so() -> None:
    few_observations = ModelStats(H100.model).learn(lease(busy_readings(20)))
    few_leases = trained(leases=MIN_LEASES - 1)
    odd = lease([(100, 70_000, 150_000, 60)] * 10)
    for model in (few_observations, few_leases):
        result = score(model, odd)
        assert (result.value, result.reason, result.samples_scored) == (0.0, NOT_ENOUGH_HISTORY, 0)


def test_a_lease_like_the_history_scores_near_zero() -> None:
    result = score(trained(), lease(busy_readings(600, seed=99, util=80)))
    assert result.value < 0.01
    assert result.samples_scored == 600


def test_power_far_below_what_the_model_draws_per_utilization_scores_high() -> None:
    # 150 W at 90 %: clears the telemetry floor, but an H100 doing this work draws ~550 W.
    shifted: list[Reading] = [(90, 30_000, 150_000 + i % 500, 60) for i in range(300)]
    result = score(trained(), lease(shifted))
    assert result.value > 0.9
    assert "power_w_per_pct" in result.reason


def test_flagged_samples_add_to_the_score() -> None:
    normal = lease(busy_readings(100, seed=99, util=80))
    flags = [Flag(seq, Rule.REPLAYED_VALUES, "x") for seq in range(20)]
    assert score(trained(), normal, flags).value == pytest.approx(0.2, abs=0.01)
    assert score(trained(), normal, flags).ppm == pytest.approx(200_000, abs=10_000)
