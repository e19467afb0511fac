"""Replicated validation rules: the escape chance, sampling, agreement with and without a
tolerance, and majority verdicts."""

from __future__ import annotations

import random

import pytest

from gpupool.domain.replication import (
    Outcome,
    Run,
    Seat,
    agree,
    eligible,
    escape_probability,
    judge,
    network_of,
    pick,
    unqueued,
)


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


def test_colluders_share_of_the_pool_shrinks_the_chance_of_an_honest_rerun() -> None:
    assert escape_probability(0.5, 1, 0.5) == pytest.approx(0.75)
    assert escape_probability(0.1, 20, 0.25) == pytest.approx((1 - 0.1 * 0.75) ** 20)
    assert escape_probability(1.0, 5, 1.0) == 1.0  # a cartel that is the whole pool
    with pytest.raises(ValueError):
        escape_probability(0.5, 1, 1.5)


def test_a_network_is_the_slash_24_or_48_of_a_global_address_and_unknown_otherwise() -> None:
    assert network_of("81.2.69.160") == "81.2.69.0/24"
    assert network_of("2a00:1450:4001:80b::200e") == "2a00:1450:4001::/48"
    for unknown in ("127.0.0.1", "10.1.2.3", "192.168.1.9", "::1", "testclient", "", None):
        assert network_of(unknown) is None


def _seat(device: str, supplier: str, network: str | None = None) -> Seat:
    return Seat(device, supplier, network)


def test_a_rerun_avoids_every_earlier_supplier_and_network() -> None:
    job = _seat("a:0", "A", "81.2.69.0/24")
    pool = [
        _seat("a:1", "A"),  # the job's own supplier, another device
        _seat("b:0", "B", "81.2.69.0/24"),  # another account on the job's network
        _seat("c:0", "C", None),  # network unknown: allowed
        _seat("d:0", "D", "5.6.7.0/24"),
        _seat("e:0", "E", "9.9.9.0/24"),
    ]
    assert [s.device_id for s in eligible(pool, [job])] == ["c:0", "d:0", "e:0"]
    check = pool[3]
    assert [s.device_id for s in eligible(pool, [job, check])] == ["c:0", "e:0"]
    assert eligible(pool[:2], [job]) == []  # the run waits
    # a first run may go anywhere, in an order that is the ids' and not the caller's
    assert [s.device_id for s in eligible(pool[::-1], [])] == sorted(s.device_id for s in pool)


def test_a_first_run_skips_queued_devices_but_load_never_orders_them() -> None:
    pool = [_seat(f"d:{i}", f"S{i}") for i in range(4)]
    load = {"d:0": 5, "d:1": 1, "d:2": 0}
    assert [s.device_id for s in unqueued(pool, load, queue=2)] == ["d:1", "d:2", "d:3"]
    busy = {s.device_id: 3 for s in pool} | {"d:2": 2}
    assert [s.device_id for s in unqueued(pool, busy, queue=2)] == ["d:2"]  # all queued
    assert unqueued([], {}, queue=2) == []


def test_a_later_validation_tops_an_earlier_draw_up_to_its_own_p() -> None:
    jobs = [str(i) for i in range(20_000)]
    uniform = random.Random(5).random
    first = set(pick(jobs, 0.3, uniform))
    rest = [j for j in jobs if j not in first]
    second = pick(rest, 0.6, uniform, {j: 0.3 for j in rest})
    share = (len(first) + len(second)) / len(jobs)
    band = 4 * (0.6 * 0.4 / len(jobs)) ** 0.5
    assert abs(share - 0.6) < band  # in all p = 0.6, not 0.3 + 0.6 x 0.7
    assert pick(rest, 0.3, uniform, {j: 0.3 for j in rest}) == []  # no new draw at the same p
    # a pass at p = 0 leaves every job to the next validator
    assert len(pick(jobs, 1.0, uniform, {j: 0.0 for j in jobs})) == len(jobs)
