"""The agent's challenge runner: NumPy end to end, and the GPU backends agreeing with it."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from gpupool.agent.proof.challenge import (
    ChallengeUnsupported,
    open_rows,
    run_challenge,
    select_backend,
)
from gpupool.crypto.merkle import leaf_hash, row_bytes, verify_proof
from gpupool.domain.challenge import matrix, pick_rows
from gpupool.services.capability import BPool, ChallengeSpec, Opening, verify_opening

SEED_A, SEED_B = 0x0123456789ABCDEF, 0xFEDCBA9876543210


def test_numpy_backend_runs_the_challenge_end_to_end_at_256() -> None:
    n = 256
    work = run_challenge(n, SEED_A, SEED_B, backend="numpy")
    assert work.backend == "numpy"
    assert work.compute_seconds > 0
    expected = matrix(SEED_A, n).astype(np.int64) @ matrix(SEED_B, n).astype(np.int64)
    assert np.array_equal(work.product, expected)
    rows = pick_rows(bytes.fromhex(work.root)[:8], n, 8)
    opened = open_rows(work, rows)
    for o in opened:
        assert verify_proof(work.root, o["index"], leaf_hash(row_bytes(o["values"])), o["proof"], n)
    spec = ChallengeSpec("c", n, SEED_A, SEED_B)
    outcome = verify_opening(spec, work.root, [Opening(**o) for o in opened], rows, BPool())
    assert outcome.ok, outcome.reason


def test_known_answer_from_the_docs() -> None:
    work = run_challenge(4, SEED_A, SEED_B, backend="numpy")
    assert work.product.tolist() == [
        [40, 16, 60, -36],
        [42, -88, 14, -58],
        [-34, -93, -69, -52],
        [-52, -136, 8, 16],
    ]
    assert work.root == "17b41dbf647b24d14ca8db9820dd21899d2df7945eabb4846eefe43694861654"
    assert open_rows(work, [2])[0]["proof"] == [
        "52449c4aaa60a8b69d2125f28638fa73a98a42466f8c463e5a988373274913d1",
        "41c0597b4d3618e08b5f5616e93f877d30a77d61af37199a016b1c281f344677",
    ]


def test_opening_a_row_outside_the_matrix_is_refused() -> None:
    work = run_challenge(8, 1, 2, backend="numpy")
    with pytest.raises(IndexError):
        open_rows(work, [8])


def test_unknown_backends_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        select_backend("opencl")


def test_a_gpu_backend_without_a_gpu_library_is_unsupported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gpupool.agent.proof.challenge as runner

    monkeypatch.setattr(runner, "_import", lambda name: None)
    with pytest.raises(ChallengeUnsupported):
        select_backend("gpu")
    assert select_backend("auto")[0] == "numpy"


@pytest.mark.gpu
def test_gpu_backend_commits_to_the_same_root_as_numpy() -> None:
    if not any(importlib.util.find_spec(m) for m in ("torch", "cupy")):
        pytest.skip("neither torch nor cupy is importable, so there is no GPU backend to compare")
    n = 2048
    gpu = run_challenge(n, SEED_A, SEED_B, backend="gpu")
    cpu = run_challenge(n, SEED_A, SEED_B, backend="numpy")
    assert gpu.backend in ("torch-cuda", "cupy")
    assert gpu.root == cpu.root
    # the chain: the fold between links must be the floor modulo on the device as well
    gpu = run_challenge(n, SEED_A, SEED_B, backend="gpu", steps=5, held=3)
    cpu = run_challenge(n, SEED_A, SEED_B, backend="numpy", steps=5, held=3)
    assert gpu.root == cpu.root
    # the memory sketch over states held in device memory, exact in float64 there
    assert gpu.sketch(0xFEED) == cpu.sketch(0xFEED)
    gpu.release()


def test_numpy_chain_equals_the_coordinators_rows() -> None:
    from gpupool.domain.challenge import chain_rows, operand

    n, steps = 48, 7
    work = run_challenge(n, 5, 6, backend="numpy", steps=steps)
    _, want = chain_rows(5, operand(6, n), n, list(range(n)), steps)
    assert np.array_equal(work.product, want)
    with pytest.raises(ValueError, match="at least one step"):
        run_challenge(n, 5, 6, backend="numpy", steps=0)


def test_host_generation_and_hashing_on_threads_give_the_same_bits() -> None:
    from gpupool.agent.proof.challenge import host_operand
    from gpupool.crypto.merkle import row_leaves
    from gpupool.domain.challenge import operand

    for n, workers in [(300, 3), (517, 2), (256, 8)]:  # uneven blocks too
        assert np.array_equal(host_operand(5, n, workers), operand(5, n))
    product = (operand(1, 200) @ operand(2, 200)).astype(np.int32)
    assert row_leaves(product, workers=3) == row_leaves(product)


def test_pooled_b_operands_are_kept_and_the_oldest_goes_first() -> None:
    from gpupool.agent.proof.challenge import OperandCache
    from gpupool.domain.challenge import operand

    cache = OperandCache(capacity=2)
    first = cache.get(1, 64)
    assert np.array_equal(first, operand(1, 64)) and not first.flags.writeable
    assert cache.get(1, 64) is first  # generated once
    cache.get(2, 64)
    cache.get(1, 64)  # 1 is now the most recent
    cache.get(3, 64)  # so 2 goes
    assert cache.get(1, 64) is first
    assert cache.get(2, 64) is not None and len(cache._entries) == 2


def test_the_chain_holds_its_last_states_and_sketches_them_exactly() -> None:
    from gpupool.domain.challenge import chain_rows, operand, sketch_vectors

    n, steps, held = 16, 6, 4
    work = run_challenge(n, 5, 6, backend="numpy", steps=steps, held=held)
    states: list[np.ndarray] = []
    chain_rows(5, operand(6, n), n, list(range(n)), steps, lambda t, x: states.append(x))
    assert len(work.held) == held
    for kept, want in zip(work.held, states[-held:], strict=True):
        assert np.array_equal(kept.astype(np.int32), want)
    # S by Python integers, no floating point anywhere
    r = sketch_vectors(0xABC, n, held).tolist()
    exact = [
        sum(int(v) * r[j][c] for j, x in enumerate(states[-held:]) for c, v in enumerate(x[i]))
        for i in range(n)
    ]
    assert work.sketch(0xABC) == exact
    work.release()
    assert work.held == []
    with pytest.raises(ValueError, match="cannot hold"):
        run_challenge(n, 5, 6, backend="numpy", steps=2, held=3)
