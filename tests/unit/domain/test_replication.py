"""Replicated validation rules: the escape chance, sampling, agreement with and without a
tolerance, and majority verdicts."""

from __future__ import annotations

import random

import pytest

from gpupool.domain.replication import Outcome, Run, agree, escape_probability, judge, pick


def test_escape_probability_is_one_minus_p_to_the_m() -> None:
    assert escape_probability(0.1, 20) == pytest.approx(0.9**20)
    assert escape_probability(0.0, 50) == 1.0
    assert escape_probability(1.0, 1) == 0.0
    with pytest.raises(ValueError):
        escape_probability(1.5, 3)


def test_pick_samples_each_job_with_probability_p() -> None:
    jobs = [str(i) for i in range(20_000)]
    picked = pick(jobs, 0.1, random.Random(3).random)
    assert 1_800 < len(picked) < 2_200
    assert pick(jobs, 0.0, random.Random(3).random) == []


def test_outputs_agree_by_hash_or_within_the_stated_tolerance() -> None:
    assert agree("h", "h", b"", b"", None)
    assert not agree("a", "b", b"1.0", b"1.0000001", None)
    assert agree("a", "b", b"1.0 2000.0", b"1.0000001 2000.0001", 1e-6)
    assert not agree("a", "b", b"1.0 2.0", b"1.0 2.1", 1e-6)
    assert not agree("a", "b", b"1.0 2.0", b"1.0", 1e-6)  # a different count
    assert not agree("a", "b", b"nan", b"nan", 1e-6)
    assert not agree("a", "b", b"one", b"one ", 1e-6)


def test_a_mismatch_needs_a_third_run_and_the_minority_is_wrong() -> None:
    good, bad = Run("job", "h1", b"x"), Run("check", "h2", b"y")
    assert judge([good, Run("check", "h1", b"x")], None).outcome is Outcome.CONFIRMED
    assert judge([good, bad], None).outcome is Outcome.THIRD_RUN
    verdict = judge([good, bad, Run("third", "h1", b"x")], None)
    assert verdict.outcome is Outcome.CAUGHT and verdict.wrong == ("check",)
    lying_job = Run("job", "h2", b"y")
    verdict = judge([lying_job, Run("check", "h1", b"x"), Run("third", "h1", b"x")], None)
    assert verdict.wrong == ("job",)
    assert judge([good, bad, Run("third", "h3", b"z")], None).outcome is Outcome.NO_MAJORITY
