"""The agent's side of the capability challenge: multiply the two seeded matrices on the
device (a chain of `steps` products, X_1 = A B and X_(t+1) = g(X_t) B), commit to the last
product with a Merkle root, and open the rows the coordinator asks for.

Backends: "numpy" (CPU, BLAS sgemm), "torch-cuda" (PyTorch with CUDA) and "cupy". "auto"
takes the first GPU library that imports and sees a device, else NumPy; "gpu" insists on a GPU
library. GPU libraries are imported here, lazily, and only when asked for, so an agent without
them never loads them. On every backend the matrices are generated on the CPU with NumPy and
copied to the device: generation is not what the challenge measures, and one generator keeps
every backend's bits identical. Only the multiplication is timed, after a warm-up that
initialises the BLAS library, with the GPU synchronised before the clock stops. TF32 is
switched off so the figure compares with the FP32 table (TF32 would give the same, exact
product, since entries and partial sums fit; only the speed would differ). The fold g between
links is done in int32 on the device, exactly, and costs n^2 against the link's n^3.

The coordinator times the challenge on its own clock; `compute_seconds` here is what the
agent reports for information (and what the benchmarks print).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from gpupool.crypto.merkle import MerkleTree, row_leaves
from gpupool.domain.challenge import fold, matrix_rows, operand

BACKENDS = ("auto", "gpu", "numpy", "torch-cuda", "cupy")
# (A, B, steps) -> (the chain's last product, seconds of the timed multiplications)
Multiply = Callable[[npt.NDArray[np.float32], npt.NDArray[np.float32], int], tuple[Any, float]]


class ChallengeUnsupported(RuntimeError):
    """The requested backend cannot run here (no GPU library, no device)."""


@dataclass(frozen=True, slots=True)
class ChallengeWork:
    n: int
    product: npt.NDArray[np.int32]
    tree: MerkleTree
    compute_seconds: float
    backend: str

    @property
    def root(self) -> str:
        return self.tree.root


def _import(name: str) -> ModuleType | None:
    # importlib rather than `import torch`: the type checker and the import contracts must
    # not require optional GPU libraries that most machines lack.
    try:
        return importlib.import_module(name)
    except Exception:  # not installed, or installed without the CUDA libraries it links to
        return None


def _numpy_multiply(
    a: npt.NDArray[np.float32], b: npt.NDArray[np.float32], steps: int = 1
) -> tuple[npt.NDArray[np.int32], float]:
    _ = a[:64, :64] @ b[:64, :64]  # start BLAS's threads outside the timing
    started = time.perf_counter()
    c = a @ b
    for _ in range(steps - 1):
        c = fold(c.astype(np.int32)).astype(np.float32) @ b
    seconds = time.perf_counter() - started
    return c.astype(np.int32), seconds


def _torch_backend() -> Multiply | None:
    torch = _import("torch")
    try:
        if torch is None or not torch.cuda.is_available():
            return None
    except Exception:  # a broken driver install raises rather than answering False
        return None

    def multiply(
        a: npt.NDArray[np.float32], b: npt.NDArray[np.float32], steps: int = 1
    ) -> tuple[Any, float]:
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            da, db = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
            torch.matmul(da, db)  # warm-up: cuBLAS handle, workspace, kernel choice
            torch.cuda.synchronize()
            started = time.perf_counter()
            dc = torch.matmul(da, db)
            for _ in range(steps - 1):  # g in int32: remainder has the floor sign, as specified
                folded = torch.remainder(dc.to(torch.int32), 17) - 8
                dc = torch.matmul(folded.to(torch.float32), db)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            product = dc.to(torch.int32).cpu().numpy()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
        del da, db, dc
        torch.cuda.empty_cache()  # the device goes back to renters' leases afterwards
        return product, seconds

    return multiply


def _cupy_backend() -> Multiply | None:
    cupy = _import("cupy")
    try:
        if cupy is None or cupy.cuda.runtime.getDeviceCount() == 0:
            return None
    except Exception:  # CuPy raises its own CUDA errors when no driver is present
        return None

    def multiply(
        a: npt.NDArray[np.float32], b: npt.NDArray[np.float32], steps: int = 1
    ) -> tuple[Any, float]:
        da, db = cupy.asarray(a), cupy.asarray(b)
        cupy.matmul(da, db)  # warm-up
        cupy.cuda.Device().synchronize()
        started = time.perf_counter()
        dc = cupy.matmul(da, db)
        for _ in range(steps - 1):  # CuPy's % on integers is the floor modulo, as NumPy's
            folded = dc.astype(cupy.int32) % 17 - 8
            dc = cupy.matmul(folded.astype(cupy.float32), db)
        cupy.cuda.Device().synchronize()
        seconds = time.perf_counter() - started
        product = cupy.asnumpy(dc.astype(cupy.int32))
        del da, db, dc
        cupy.get_default_memory_pool().free_all_blocks()
        return product, seconds

    return multiply


GPU_BACKENDS: dict[str, Callable[[], Multiply | None]] = {
    "torch-cuda": _torch_backend,
    "cupy": _cupy_backend,
}


def select_backend(backend: str = "auto") -> tuple[str, Multiply]:
    """The backend's name and its timed multiplication; ChallengeUnsupported if unavailable."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    if backend == "numpy":
        return "numpy", _numpy_multiply
    for name in [backend] if backend in GPU_BACKENDS else list(GPU_BACKENDS):
        multiply = GPU_BACKENDS[name]()
        if multiply is not None:
            return name, multiply
    if backend == "auto":
        return "numpy", _numpy_multiply
    raise ChallengeUnsupported(f"backend {backend!r}: no usable torch.cuda or CuPy device")


HOST_THREADS = max(1, min(8, os.cpu_count() or 1))


def host_operand(seed: int, n: int, workers: int = HOST_THREADS) -> npt.NDArray[np.float32]:
    """`operand(seed, n)` generated on `workers` threads in row blocks (NumPy's ufuncs let
    go of the GIL): generation is host work inside the coordinator's timed window."""
    if workers <= 1 or n < 256:
        return operand(seed, n)
    out = np.empty((n, n), dtype=np.float32)
    bounds = np.linspace(0, n, workers + 1).astype(int)

    def block(i: int) -> None:
        rows = np.arange(bounds[i], bounds[i + 1])
        out[bounds[i] : bounds[i + 1]] = matrix_rows(seed, n, rows)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(block, range(workers)))
    return out


class OperandCache:
    """The last few B operands by (seed, n), read-only. The coordinator draws B from a small
    pool of seeds (docs/challenge.md, "The B pool"), so an agent that keeps them generates
    only the fresh A inside the timed window. B is no secret: keeping it changes nothing the
    challenge proves. Four entries match the coordinator's pool (1 GiB at n = 8192)."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[int, int], npt.NDArray[np.float32]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, seed: int, n: int) -> npt.NDArray[np.float32]:
        key = (seed, n)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        b = host_operand(seed, n)
        b.flags.writeable = False
        with self._lock:
            self._entries[key] = b
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return b


B_OPERANDS = OperandCache()


def run_challenge(
    n: int, seed_a: int, seed_b: int, backend: str = "auto", steps: int = 1
) -> ChallengeWork:
    """Generate A and B, run the chain of `steps` products on the chosen backend, and commit
    to the last product."""
    if steps < 1:
        raise ValueError("a chain has at least one step")
    name, multiply = select_backend(backend)
    a, b = host_operand(seed_a, n), B_OPERANDS.get(seed_b, n)
    product, seconds = multiply(a, b, steps)
    product = np.ascontiguousarray(product, dtype=np.int32)
    tree = MerkleTree(row_leaves(product, HOST_THREADS))
    return ChallengeWork(n, product, tree, seconds, name)


def open_rows(work: ChallengeWork, indices: Sequence[int]) -> list[dict[str, Any]]:
    """The requested rows as the agent sends them: index, values (ints), proof (hex, bottom-up)."""
    openings = []
    for i in indices:
        if not 0 <= i < work.n:
            raise IndexError(f"row {i} is outside 0..{work.n - 1}")
        openings.append(
            {"index": i, "values": work.product[i].tolist(), "proof": work.tree.proof(i)}
        )
    return openings


def run_pinned(
    n: int, seed_a: int, seed_b: int, cores: Sequence[int], steps: int = 1
) -> ChallengeWork:
    """Run the NumPy challenge in a child process held to `cores`, with as many BLAS threads
    as cores, so a CPU device is measured on its own cores only."""
    count = str(len(cores))
    env = {**os.environ, "OPENBLAS_NUM_THREADS": count, "OMP_NUM_THREADS": count}
    with tempfile.TemporaryDirectory(prefix="gpupool-challenge-") as tmp:
        out = Path(tmp) / "product.npy"
        argv = [
            sys.executable,
            "-m",
            "gpupool.agent.proof.challenge",
            str(n),
            str(seed_a),
            str(seed_b),
        ]
        argv.append(str(steps))
        done = subprocess.run(
            ["taskset", "-c", ",".join(map(str, sorted(cores))), *argv, str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
        if done.returncode != 0:
            raise ChallengeUnsupported(f"the pinned challenge failed: {done.stderr.strip()[-300:]}")
        product = np.load(out)
    seconds = float(done.stdout.strip().splitlines()[-1])
    return ChallengeWork(n, product, MerkleTree(row_leaves(product)), seconds, "numpy")


def _main(args: Sequence[str]) -> None:
    n, seed_a, seed_b, steps, out = int(args[0]), int(args[1]), int(args[2]), int(args[3]), args[4]
    work = run_challenge(n, seed_a, seed_b, backend="numpy", steps=steps)
    np.save(out, work.product)
    print(repr(work.compute_seconds))


if __name__ == "__main__":
    _main(sys.argv[1:])
