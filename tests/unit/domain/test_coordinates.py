"""Vivaldi with height: the update rule moves coordinates the right way and converges on a
network whose true geometry is known."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpupool.domain.coordinates import (
    INITIAL_ERROR,
    MIN_HEIGHT,
    Coordinate,
    distance,
    update,
    update_many,
)

UP = (1.0, 0.0, 0.0, 0.0)


def test_distance_adds_both_heights_to_the_euclidean_part() -> None:
    a = Coordinate((0.0, 0.0, 0.0, 0.0), height=2.0)
    b = Coordinate((3.0, 4.0, 0.0, 0.0), height=1.0)
    assert distance(a, b) == pytest.approx(8.0)


def test_a_too_short_prediction_pushes_apart_and_a_too_long_one_pulls_together() -> None:
    a = Coordinate((0.0, 0.0, 0.0, 0.0), 1.0, 0.5)
    b = Coordinate((10.0, 0.0, 0.0, 0.0), 1.0, 0.5)  # predicted 12 ms
    farther = update(a, b, 50.0, UP)
    assert distance(farther, b) > 12.0
    assert farther.vec[0] < 0 and farther.height > a.height
    closer = update(a, b, 5.0, UP)
    assert distance(closer, b) < 12.0
    assert closer.vec[0] > 0 and closer.height < a.height


def test_a_confident_node_moves_less_for_an_unsure_peer() -> None:
    peer = Coordinate((10.0, 0.0, 0.0, 0.0), 1.0, 1.5)
    sure = update(Coordinate((0.0,) * 4, 1.0, 0.05), peer, 40.0, UP)
    unsure = update(Coordinate((0.0,) * 4, 1.0, 1.5), peer, 40.0, UP)
    assert abs(sure.vec[0]) < abs(unsure.vec[0])


def test_two_nodes_at_one_point_separate_along_the_given_direction() -> None:
    a, b = Coordinate.origin(), Coordinate.origin()
    moved = update(a, b, 20.0, (0.0, 1.0, 0.0, 0.0))
    assert moved.vec[1] > 0 and moved.vec[0] == 0.0
    assert moved.error <= INITIAL_ERROR + 1e-9


@pytest.mark.parametrize("rtt", [0.0, -1.0, math.nan, math.inf])
def test_an_rtt_that_is_not_a_positive_number_is_refused(rtt: float) -> None:
    with pytest.raises(ValueError):
        update(Coordinate.origin(), Coordinate.origin(), rtt, UP)


def test_coordinates_converge_on_a_known_network() -> None:
    """Eight hosts on a plane with access links (heights): the true RTT is the plane
    distance plus both access delays. After rounds of probes, predictions are within 5 %."""
    rng = random.Random(3)
    places = [(rng.uniform(0, 100), rng.uniform(0, 100)) for _ in range(8)]
    access = [rng.uniform(1, 5) for _ in range(8)]

    def rtt(i: int, j: int) -> float:
        return math.dist(places[i], places[j]) + access[i] + access[j]

    coords = [Coordinate.origin() for _ in places]
    for _ in range(3000):
        i, j = rng.sample(range(8), 2)
        tie = tuple(rng.gauss(0, 1) for _ in range(4))
        coords[i] = update(coords[i], coords[j], rtt(i, j), tie)
    errors = [
        abs(distance(coords[i], coords[j]) - rtt(i, j)) / rtt(i, j)
        for i in range(8)
        for j in range(i + 1, 8)
    ]
    assert sorted(errors)[len(errors) // 2] < 0.05
    assert max(c.error for c in coords) < 0.2
    assert all(c.height >= MIN_HEIGHT for c in coords)


finite = st.floats(-500, 500, allow_nan=False)


@given(
    st.tuples(finite, finite, finite, finite),
    st.tuples(finite, finite, finite, finite),
    st.floats(0.01, 50),
    st.floats(0.01, 50),
    st.floats(0.01, 1.5),
    st.floats(0.01, 1.5),
    st.floats(0.1, 800),
)
def test_the_vector_form_applies_the_same_rule(
    va: tuple[float, ...],
    vb: tuple[float, ...],
    ha: float,
    hb: float,
    ea: float,
    eb: float,
    rtt: float,
) -> None:
    a, b = Coordinate(va, ha, ea), Coordinate(vb, hb, eb)
    expected = update(a, b, rtt, UP)
    vec = np.array([va, vb], dtype=float)
    height = np.array([ha, hb])
    error = np.array([ea, eb])
    update_many(vec, height, error, np.array([0]), np.array([1]), np.array([rtt]), np.array([UP]))
    assert vec[0] == pytest.approx(expected.vec, abs=1e-6)
    assert height[0] == pytest.approx(expected.height, abs=1e-6)
    assert error[0] == pytest.approx(expected.error, abs=1e-9)
    assert tuple(vec[1]) == vb  # only the local node moves
