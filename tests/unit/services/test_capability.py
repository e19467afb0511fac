"""The coordinator's check of opened rows: honest answers pass, every kind of wrong one is
caught and named."""

from __future__ import annotations

import numpy as np
import pytest

from gpupool.agent.proof.challenge import ChallengeWork, open_rows, run_challenge
from gpupool.crypto.merkle import MerkleTree, row_leaves
from gpupool.domain.challenge import matrix, pick_rows
from gpupool.services.capability import (
    BPool,
    ChallengeSpec,
    Opening,
    challenge_spec,
    verify_opening,
)

N = 96
SPEC = ChallengeSpec("c-1", N, seed_a=0x1234, seed_b=0xBEEF)


@pytest.fixture(scope="module")
def honest() -> ChallengeWork:
    return run_challenge(N, SPEC.seed_a, SPEC.seed_b, backend="numpy")


def openings(work: ChallengeWork, rows: list[int]) -> list[Opening]:
    return [Opening(**o) for o in open_rows(work, rows)]


def tampered(work: ChallengeWork, row: int, column: int) -> ChallengeWork:
    """The agent's product with one entry wrong and a root recomputed over it, so every proof
    is consistent: only the coordinator's own product can catch it."""
    product = work.product.copy()
    product[row, column] += 1
    tree = MerkleTree(row_leaves(product))
    return ChallengeWork(work.n, product, tree, work.compute_seconds, work.backend)


def test_an_honest_answer_passes(honest: ChallengeWork) -> None:
    rows = pick_rows(b"after the root", N, 8)
    outcome = verify_opening(SPEC, honest.root, openings(honest, rows), rows, BPool())
    assert outcome.ok, outcome.reason


def test_one_wrong_row_is_caught_and_named_when_it_is_opened(honest: ChallengeWork) -> None:
    cheat = tampered(honest, row=17, column=40)
    rows = [3, 17, 60]
    outcome = verify_opening(SPEC, cheat.root, openings(cheat, rows), rows, BPool())
    assert not outcome.ok
    assert outcome.reason == "row 17 differs from the product at column 40"


def test_one_wrong_row_escapes_only_while_it_is_not_opened(honest: ChallengeWork) -> None:
    cheat = tampered(honest, row=17, column=40)
    rows = [3, 18, 60]
    assert verify_opening(SPEC, cheat.root, openings(cheat, rows), rows, BPool()).ok


def test_a_root_the_proofs_do_not_reach_is_caught(honest: ChallengeWork) -> None:
    rows = [0, 5, N - 1]
    wrong_root = MerkleTree(row_leaves(honest.product[::-1])).root
    outcome = verify_opening(SPEC, wrong_root, openings(honest, rows), rows, BPool())
    assert not outcome.ok
    assert outcome.reason == "bad proof for row 0"


def test_a_changed_value_under_an_honest_root_fails_its_proof(honest: ChallengeWork) -> None:
    rows = [7, 9]
    opened = openings(honest, rows)
    values = list(opened[1].values)
    values[0] += 1
    opened[1] = Opening(9, values, opened[1].proof)
    outcome = verify_opening(SPEC, honest.root, opened, rows, BPool())
    assert outcome.reason == "bad proof for row 9"


def test_an_answer_for_other_seeds_is_caught(honest: ChallengeWork) -> None:
    rows = [1, 2]
    other = ChallengeSpec("c-2", N, seed_a=SPEC.seed_a + 1, seed_b=SPEC.seed_b)
    outcome = verify_opening(other, honest.root, openings(honest, rows), rows, BPool())
    assert not outcome.ok
    assert outcome.reason.startswith("row 1 differs")


def test_unrequested_missing_and_repeated_rows_are_refused(honest: ChallengeWork) -> None:
    rows = [4, 8, 12]
    pool = BPool()
    extra = verify_opening(SPEC, honest.root, openings(honest, [4, 8, 13]), rows, pool)
    assert (extra.ok, extra.reason) == (False, "unrequested row 13")
    missing = verify_opening(SPEC, honest.root, openings(honest, [4, 8]), rows, pool)
    assert (missing.ok, missing.reason) == (False, "wrong row count: expected 3, got 2")
    twice = verify_opening(SPEC, honest.root, openings(honest, [4, 8, 8]), rows, pool)
    assert (twice.ok, twice.reason) == (False, "row 8 opened twice")


def test_a_check_that_requests_no_rows_is_a_caller_error(honest: ChallengeWork) -> None:
    with pytest.raises(ValueError, match="at least one row"):
        verify_opening(SPEC, honest.root, [], [], BPool())


def test_short_rows_and_non_int32_values_are_refused(honest: ChallengeWork) -> None:
    rows = [2]
    [good] = openings(honest, rows)
    short = Opening(2, list(good.values)[:-1], good.proof)
    assert verify_opening(SPEC, honest.root, [short], rows, BPool()).reason == (
        f"row 2 has {N - 1} values, expected {N}"
    )
    huge = Opening(2, [2**40, *list(good.values)[1:]], good.proof)
    assert verify_opening(SPEC, honest.root, [huge], rows, BPool()).reason == (
        "row 2 is not a row of int32 values"
    )


def test_the_pool_keeps_the_most_recently_used_matrices() -> None:
    pool = BPool(capacity=2)
    first = pool.get(1, 16)
    assert np.array_equal(first, matrix(1, 16).astype(np.float32))
    assert pool.get(1, 16) is first
    pool.get(2, 16)
    pool.get(1, 16)  # touch 1, so 2 is the least recently used
    pool.get(3, 16)
    assert (1, 16) in pool and (3, 16) in pool and (2, 16) not in pool
    assert len(pool) == 2
    assert not first.flags.writeable


def test_a_challenge_takes_a_fresh_a_seed_and_a_pool_b_seed() -> None:
    randomness = bytes(range(16))
    spec = challenge_spec("c-9", 512, randomness, b_seeds=[10, 20, 30])
    assert spec.seed_a == int.from_bytes(randomness[:8], "little")
    assert spec.seed_b in (10, 20, 30)
    assert spec == challenge_spec("c-9", 512, randomness, b_seeds=[10, 20, 30])
    with pytest.raises(ValueError, match="16 random bytes"):
        challenge_spec("c-9", 512, randomness[:15], b_seeds=[10])
    with pytest.raises(ValueError, match="empty"):
        challenge_spec("c-9", 512, randomness, b_seeds=[])


def test_a_chained_answer_passes_and_one_link_short_is_caught() -> None:
    spec = ChallengeSpec("c-2", N, seed_a=0x77, seed_b=0xBEEF, steps=6)
    rows = pick_rows(b"a chained answer", N, 8)
    chained = run_challenge(N, spec.seed_a, spec.seed_b, backend="numpy", steps=6)
    outcome = verify_opening(spec, chained.root, openings(chained, rows), rows, BPool())
    assert outcome.ok, outcome.reason
    short = run_challenge(N, spec.seed_a, spec.seed_b, backend="numpy", steps=5)
    outcome = verify_opening(spec, short.root, openings(short, rows), rows, BPool())
    assert not outcome.ok and "differs from the product" in outcome.reason


def test_one_wrong_entry_in_the_last_link_is_caught_when_its_row_is_opened() -> None:
    spec = ChallengeSpec("c-3", N, seed_a=0x78, seed_b=0xBEEF, steps=3)
    work = tampered(run_challenge(N, spec.seed_a, spec.seed_b, "numpy", 3), row=5, column=9)
    outcome = verify_opening(spec, work.root, openings(work, [5]), [5], BPool())
    assert not outcome.ok and outcome.reason == "row 5 differs from the product at column 9"


def test_the_memory_sketch_is_checked_at_the_opened_rows() -> None:
    n, steps, held, seed = 32, 5, 3, 0x5EED
    spec = ChallengeSpec("ch-m", n, 11, 12, steps, held, seed)
    work = run_challenge(n, spec.seed_a, spec.seed_b, "numpy", steps, held)
    s = work.sketch(seed)
    rows = [2, 17]
    opened = openings(work, rows)
    pool = BPool()
    good = verify_opening(spec, work.root, opened, rows, pool, {i: s[i] for i in rows})
    assert good.ok, good.reason
    bad = verify_opening(spec, work.root, opened, rows, pool, {2: s[2], 17: s[17] + 1})
    assert not bad.ok and "row 17" in bad.reason and f"last {held} states" in bad.reason
    missing = verify_opening(spec, work.root, opened, rows, pool, None)
    assert not missing.ok and "missing" in missing.reason


def test_the_default_sizing_holds_three_quarters_of_the_claimed_memory() -> None:
    from gpupool.domain.challenge import expected_flops
    from gpupool.services.challenges import Sizing

    sizing = Sizing()
    h100 = expected_flops("NVIDIA H100 80GB HBM3")
    # 80 GB: the held states make the chain longer than the 137 links of 3 s
    assert sizing.shape(h100, 2048, 81_559 * 2**20) == (8192, 239, 239)
    # 24 GB: 3 s of compute is the longer part; the sketch covers its last 72 links
    assert sizing.shape(expected_flops("NVIDIA GeForce RTX 4090"), 2048, 24_564 * 2**20) == (
        8192,
        137,
        72,
    )
    # 141 GB: capped at max_steps, 96 GiB held (still over half)
    assert sizing.shape(expected_flops("NVIDIA H200"), 2048, 143_771 * 2**20)[2] == 384
    assert sizing.shape(None, 2048, 81_559 * 2**20) == (2048, 1, 0)  # CPUs: no memory phase
    assert sizing.memory_deadline(8192, 239) == pytest.approx(0.3 + 239 * 4 * 8192**2 / 128e9)
