"""The challenge generator against a scalar rendering of its spec, exact products, row picks and
the throughput verdict."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpupool.domain.challenge import (
    MAX_N,
    MIN_RATIO,
    chain_rows,
    chain_steps,
    challenge_flops,
    expected_flops,
    fold,
    format_seed,
    matrix,
    matrix_rows,
    operand,
    parse_seed,
    pick_rows,
    product_rows,
    throughput_verdict,
    timed_flops,
)

M64 = 2**64


def spec_entry(seed: int, n: int, i: int, j: int) -> int:
    """docs/challenge.md, line by line, in plain Python integers."""
    x = (seed + (i * n + j + 1) * 0x9E3779B97F4A7C15) % M64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % M64
    z = z ^ (z >> 31)
    return (z >> 32) % 17 - 8


def test_generator_matches_the_scalar_spec_for_small_matrices() -> None:
    for seed, n in [(0x0123456789ABCDEF, 4), (0, 7), (M64 - 1, 13), (42, 1)]:
        expected = [[spec_entry(seed, n, i, j) for j in range(n)] for i in range(n)]
        assert matrix(seed, n).tolist() == expected


def test_worked_example_in_the_docs_holds() -> None:
    a = matrix(0x0123456789ABCDEF, 4)
    b = matrix(0xFEDCBA9876543210, 4)
    assert a.tolist() == [[-6, -4, 4, 0], [-8, 6, 8, 0], [7, 8, 5, -4], [2, 8, 4, 8]]
    assert b.tolist() == [[-6, -2, -2, 0], [-1, -8, -7, 1], [0, -7, 5, -8], [-4, -5, 6, 5]]
    product = product_rows(0x0123456789ABCDEF, b, 4, [0, 3])
    assert product.tolist() == [[40, 16, 60, -36], [-52, -136, 8, 16]]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, M64 - 1),
    n=st.integers(1, 300),
    data=st.data(),
)
def test_rows_generated_alone_equal_those_rows_of_the_full_matrix(
    seed: int, n: int, data: st.DataObject
) -> None:
    rows = data.draw(st.lists(st.integers(0, n - 1), max_size=12))
    alone = matrix_rows(seed, n, rows)
    assert alone.shape == (len(rows), n)
    assert np.array_equal(alone, matrix(seed, n)[rows])
    if rows:
        assert alone[0].tolist() == [spec_entry(seed, n, rows[0], j) for j in range(n)]


def test_entries_lie_in_minus_eight_to_eight_and_take_every_value() -> None:
    m = matrix(2024, 512)
    assert m.min() == -8
    assert m.max() == 8
    assert set(np.unique(m).tolist()) == set(range(-8, 9))


def test_different_seeds_give_different_matrices() -> None:
    assert not np.array_equal(matrix(1, 64), matrix(2, 64))


def test_generator_refuses_bad_sizes_seeds_and_rows() -> None:
    with pytest.raises(ValueError, match="outside"):
        matrix(1, MAX_N + 1)
    with pytest.raises(ValueError, match="outside"):
        matrix(1, 0)
    with pytest.raises(ValueError, match="64-bit"):
        matrix(M64, 4)
    with pytest.raises(ValueError, match="row index"):
        matrix_rows(1, 4, [4])


def test_product_rows_are_exact_against_python_integers() -> None:
    n = 64
    a = [[spec_entry(11, n, i, j) for j in range(n)] for i in range(n)]
    b = [[spec_entry(22, n, i, j) for j in range(n)] for i in range(n)]
    rows = [0, 5, 63, 17]
    got = product_rows(11, operand(22, n), n, rows)
    assert got.dtype == np.int32
    for r, got_row in zip(rows, got.tolist(), strict=True):
        assert got_row == [sum(a[r][t] * b[t][j] for t in range(n)) for j in range(n)]


def test_product_rows_refuse_a_b_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match="shape"):
        product_rows(1, operand(2, 8), 16, [0])


def test_seeds_travel_as_sixteen_hex_characters() -> None:
    assert format_seed(0x0123456789ABCDEF) == "0123456789abcdef"
    assert format_seed(1) == "0000000000000001"
    assert parse_seed("0123456789ABCDEF") == 0x0123456789ABCDEF
    for bad in ("123", "0123456789abcdeg", "0x23456789abcdef"):
        with pytest.raises(ValueError):
            parse_seed(bad)


@given(
    random_bytes=st.binary(min_size=8, max_size=64), n=st.integers(1, 5000), k=st.integers(1, 16)
)
def test_pick_rows_gives_k_distinct_rows_in_range_deterministically(
    random_bytes: bytes, n: int, k: int
) -> None:
    k = min(k, n)
    rows = pick_rows(random_bytes, n, k)
    assert len(rows) == len(set(rows)) == k
    assert all(0 <= r < n for r in rows)
    assert rows == pick_rows(random_bytes, n, k)


def test_pick_rows_depends_on_the_randomness_and_covers_the_range() -> None:
    picks = {tuple(pick_rows(i.to_bytes(8, "little"), 2048, 8)) for i in range(200)}
    assert len(picks) == 200
    seen = {r for p in picks for r in p}
    assert min(seen) < 100 and max(seen) > 1948


def test_pick_rows_refuses_impossible_requests() -> None:
    with pytest.raises(ValueError, match="distinct"):
        pick_rows(b"12345678", 4, 5)
    with pytest.raises(ValueError, match="8 random bytes"):
        pick_rows(b"1234", 4, 1)


def test_table_matches_models_by_whole_word_most_specific_first() -> None:
    assert expected_flops("NVIDIA H100 80GB HBM3") == 50e12
    assert expected_flops("NVIDIA H100 PCIe") == 38e12
    assert expected_flops("NVIDIA A100-SXM4-80GB") == 18e12
    assert expected_flops("NVIDIA A10") == 20e12
    assert expected_flops("NVIDIA L40S") == 55e12
    assert expected_flops("NVIDIA L4") == 18e12
    assert expected_flops("Tesla T4") == 4.5e12
    assert expected_flops("nvidia geforce rtx 4090") == 50e12
    assert expected_flops("AMD EPYC 7763 64-Core Processor") is None


def test_a_known_model_at_its_expected_speed_passes() -> None:
    verdict = throughput_verdict("NVIDIA A100-SXM4-40GB", 17e12)
    assert verdict.ok
    assert verdict.expected == 18e12
    assert verdict.ratio == pytest.approx(17 / 18)


def test_a_model_below_half_its_expected_speed_fails() -> None:
    # An RTX 3080's honest figure claimed as an H100.
    verdict = throughput_verdict("NVIDIA H100 80GB HBM3", 0.2 * 50e12)
    assert not verdict.ok
    assert verdict.ratio == pytest.approx(0.2)
    assert "below" in verdict.reason
    assert throughput_verdict("NVIDIA H100 80GB HBM3", MIN_RATIO * 50e12).ok


def test_a_cpu_passes_while_no_reference_is_learned() -> None:
    verdict = throughput_verdict("AMD EPYC 7763 64-Core Processor", 1e9)
    assert verdict.ok
    assert verdict.expected is None
    assert "no reference" in verdict.reason


def test_a_cpu_is_judged_against_its_learned_reference() -> None:
    model = "AMD EPYC 7763 64-Core Processor"
    assert throughput_verdict(model, 1e11, learned_reference=2e11).ok
    slow = throughput_verdict(model, 1e10, learned_reference=2e11)
    assert not slow.ok
    assert slow.expected == 2e11
    assert "learned" in slow.reason


def test_a_non_positive_figure_never_passes() -> None:
    for flops in (0.0, -1.0, float("nan"), float("inf")):
        assert not throughput_verdict("AMD EPYC", flops).ok


# The chain (docs/challenge.md, "The chain") ---------------------------------------------------


def test_fold_is_the_floor_modulo_seventeen_less_eight() -> None:
    values = np.array([-18, -17, -1, 0, 16, 17, 40, -36, 2**19], dtype=np.int32)
    assert fold(values).tolist() == [v % 17 - 8 for v in values.tolist()]
    assert fold(values).tolist() == [8, -8, 8, -8, 8, -8, -2, 7, 2**19 % 17 - 8]


def _scalar_chain(seed_a: int, seed_b: int, n: int, steps: int) -> list[list[int]]:
    """The chain in plain Python integers: X_1 = A B, X_(t+1) = g(X_t) B."""
    a = [[spec_entry(seed_a, n, i, j) for j in range(n)] for i in range(n)]
    b = [[spec_entry(seed_b, n, i, j) for j in range(n)] for i in range(n)]

    def times_b(x: list[list[int]]) -> list[list[int]]:
        return [[sum(x[i][k] * b[k][j] for k in range(n)) for j in range(n)] for i in range(n)]

    x = times_b(a)
    for _ in range(steps - 1):
        x = times_b([[v % 17 - 8 for v in row] for row in x])
    return x


def test_chain_rows_are_exact_against_python_integers() -> None:
    n = 9
    for steps in (1, 2, 5):
        want = _scalar_chain(7, 8, n, steps)
        _, got = chain_rows(7, operand(8, n), n, [0, 4, 8], steps)
        assert got.tolist() == [want[0], want[4], want[8]]


def test_worked_chain_example_in_the_docs_holds() -> None:
    b = matrix(0xFEDCBA9876543210, 4)
    left, product = chain_rows(0x0123456789ABCDEF, b, 4, [0, 3], 2)
    assert left.tolist() == [[-2, 8, 1, 7], [8, -8, 0, 8]]  # g(A B), rows 0 and 3
    assert product.tolist() == [[-24, -102, -5, 35], [-72, 8, 88, 32]]


def test_steps_are_sized_from_the_claimed_model_and_bounded() -> None:
    h100 = expected_flops("NVIDIA H100 80GB HBM3")
    steps = chain_steps(h100, 8192, 4.0, 256)
    assert steps == 182  # 4 s x 50 TFLOPS / (2 x 8192^3)
    assert challenge_flops(8192, steps) / h100 == pytest.approx(4.0, rel=0.01)
    assert chain_steps(expected_flops("Tesla T4"), 8192, 4.0, 256) == 17
    assert chain_steps(h100, 8192, 4.0, 100) == 100
    assert chain_steps(None, 8192, 4.0, 256) == 1  # a CPU core group: measured, not sized


def test_the_round_trip_allowance_never_more_than_doubles_the_figure() -> None:
    work = challenge_flops(64, 3)
    assert timed_flops(64, 3, 2.0, 0.05) == pytest.approx(work / 1.95)
    assert timed_flops(64, 3, 0.04, 0.05) == pytest.approx(work / 0.02)  # capped at half
    assert timed_flops(64, 3, 0.0, 0.05) > 0


def test_memory_steps_take_the_claimed_fraction_in_float32_states() -> None:
    from gpupool.domain.challenge import memory_deadline, memory_steps

    h100 = 81_559 * 2**20
    assert memory_steps(h100, 8192, 0.75) == 239  # 64 GB of 256 MiB states
    assert memory_steps(h100, 8192, 0.0) == 0 and memory_steps(0, 8192, 0.75) == 0
    assert 239 * 4 * 8192**2 >= 0.75 * h100 > 238 * 4 * 8192**2
    # one read of 64 GB at twice PCIe 5.0's rate, after a 0.3 s floor
    assert memory_deadline(64 * 10**9, 0.3, 128e9) == pytest.approx(0.8)
