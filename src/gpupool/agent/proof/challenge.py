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
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from gpupool.crypto.merkle import MerkleTree, row_leaves
from gpupool.domain.challenge import fold, matrix_rows, operand, sketch_of, sketch_vectors

BACKENDS = ("auto", "gpu", "numpy", "torch-cuda", "cupy")


class Backend(NamedTuple):
    """One way to run the chain. `multiply(A, B, steps, held)` returns the last product, the
    seconds of the timed multiplications and the last `held` states, left where they were
    computed (device memory on a GPU); `sketch(states, vectors)` is S = sum_j states[j] r_j,
    exactly, as int64 on the host."""

    multiply: Callable[[npt.NDArray[np.float32], npt.NDArray[np.float32], int, int], Any]
    sketch: Callable[[list[Any], npt.NDArray[np.int8]], npt.NDArray[np.int64]]
    release: Callable[[], None] = lambda: None  # give the device's memory back


class ChallengeUnsupported(RuntimeError):
    """The requested backend cannot run here (no GPU library, no device)."""


@dataclass(slots=True)
class ChallengeWork:
    n: int
    product: npt.NDArray[np.int32]
    tree: MerkleTree
    compute_seconds: float
    backend: str
    held: list[Any] = field(default_factory=list)  # the last states, for the memory sketch
    engine: Backend | None = None

    @property
    def root(self) -> str:
        return self.tree.root

    def sketch(self, seed: int) -> list[int]:
        """S over the held states (docs/challenge.md, "Memory: the held states")."""
        if not self.held or self.engine is None:
            raise ChallengeUnsupported("this challenge's states were not held")
        vectors = sketch_vectors(seed, self.n, len(self.held))
        return [int(v) for v in self.engine.sketch(self.held, vectors)]

    def release(self) -> None:
        """Drop the held states (once the rows are open: they are the device's memory)."""
        self.held.clear()
        if self.engine is not None:
            self.engine.release()


def _import(name: str) -> ModuleType | None:
    # importlib rather than `import torch`: the type checker and the import contracts must
    # not require optional GPU libraries that most machines lack.
    try:
        return importlib.import_module(name)
    except Exception:  # not installed, or installed without the CUDA libraries it links to
        return None


def _numpy_multiply(
    a: npt.NDArray[np.float32], b: npt.NDArray[np.float32], steps: int = 1, held: int = 0
) -> tuple[npt.NDArray[np.int32], float, list[npt.NDArray[np.float32]]]:
    _ = a[:64, :64] @ b[:64, :64]  # start BLAS's threads outside the timing
    kept: list[npt.NDArray[np.float32]] = []
    started = time.perf_counter()
    c = a @ b
    for t in range(2, steps + 1):
        if held and t - 1 > steps - held:  # X_(t-1) is one of the last `held` states
            kept.append(c)
        c = fold(c.astype(np.int32)).astype(np.float32) @ b
    seconds = time.perf_counter() - started
    if held:
        kept.append(c)
    return c.astype(np.int32), seconds, kept


NUMPY = Backend(_numpy_multiply, sketch_of)


def _torch_backend() -> Backend | None:
    torch = _import("torch")
    try:
        if torch is None or not torch.cuda.is_available():
            return None
    except Exception:  # a broken driver install raises rather than answering False
        return None

    def multiply(
        a: npt.NDArray[np.float32], b: npt.NDArray[np.float32], steps: int = 1, held: int = 0
    ) -> tuple[Any, float, list[Any]]:
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        kept: list[Any] = []
        try:
            da, db = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
            torch.matmul(da, db)  # warm-up: cuBLAS handle, workspace, kernel choice
            torch.cuda.synchronize()
            started = time.perf_counter()
            dc = torch.matmul(da, db)
            del da
            for t in range(2, steps + 1):  # g in int32: remainder has the floor sign
                if held and t - 1 > steps - held:
                    kept.append(dc)  # stays in device memory: that is what is proven
                folded = torch.remainder(dc.to(torch.int32), 17) - 8
                dc = torch.matmul(folded.to(torch.float32), db)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            if held:
                kept.append(dc)
            product = dc.to(torch.int32).cpu().numpy()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
        del db, dc
        if not held:
            torch.cuda.empty_cache()  # the device goes back to renters' leases afterwards
        return product, seconds, kept

    def sketch(states: list[Any], vectors: npt.NDArray[np.int8]) -> npt.NDArray[np.int64]:
        # float64 is exact here (|S| < 2^53) and a matrix-vector product is memory-bound, so
        # even a card with slow FP64 reads each state at its memory bandwidth.
        r = torch.from_numpy(vectors.astype(np.float64)).cuda()
        total = torch.zeros(states[0].shape[0], dtype=torch.float64, device="cuda")
        for j, state in enumerate(states):
            total += torch.mv(state.to(torch.float64), r[j])
        return np.asarray(total.to(torch.int64).cpu().numpy(), dtype=np.int64)

    return Backend(multiply, sketch, torch.cuda.empty_cache)


def _cupy_backend() -> Backend | None:
    cupy = _import("cupy")
    try:
        if cupy is None or cupy.cuda.runtime.getDeviceCount() == 0:
            return None
    except Exception:  # CuPy raises its own CUDA errors when no driver is present
        return None

    def multiply(
        a: npt.NDArray[np.float32], b: npt.NDArray[np.float32], steps: int = 1, held: int = 0
    ) -> tuple[Any, float, list[Any]]:
        kept: list[Any] = []
        da, db = cupy.asarray(a), cupy.asarray(b)
        cupy.matmul(da, db)  # warm-up
        cupy.cuda.Device().synchronize()
        started = time.perf_counter()
        dc = cupy.matmul(da, db)
        del da
        for t in range(2, steps + 1):  # CuPy's % on integers is the floor modulo, as NumPy's
            if held and t - 1 > steps - held:
                kept.append(dc)
            folded = dc.astype(cupy.int32) % 17 - 8
            dc = cupy.matmul(folded.astype(cupy.float32), db)
        cupy.cuda.Device().synchronize()
        seconds = time.perf_counter() - started
        if held:
            kept.append(dc)
        product = cupy.asnumpy(dc.astype(cupy.int32))
        del db, dc
        if not held:
            cupy.get_default_memory_pool().free_all_blocks()
        return product, seconds, kept

    def sketch(states: list[Any], vectors: npt.NDArray[np.int8]) -> npt.NDArray[np.int64]:
        r = cupy.asarray(vectors.astype(np.float64))
        total = cupy.zeros(states[0].shape[0], dtype=cupy.float64)
        for j, state in enumerate(states):
            total += state.astype(cupy.float64) @ r[j]
        return np.asarray(cupy.asnumpy(total.astype(cupy.int64)), dtype=np.int64)

    return Backend(multiply, sketch, cupy.get_default_memory_pool().free_all_blocks)


GPU_BACKENDS: dict[str, Callable[[], Backend | None]] = {
    "torch-cuda": _torch_backend,
    "cupy": _cupy_backend,
}


def select_backend(backend: str = "auto") -> tuple[str, Backend]:
    """The backend's name and its engine; ChallengeUnsupported if unavailable."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    if backend == "numpy":
        return "numpy", NUMPY
    for name in [backend] if backend in GPU_BACKENDS else list(GPU_BACKENDS):
        engine = GPU_BACKENDS[name]()
        if engine is not None:
            return name, engine
    if backend == "auto":
        return "numpy", NUMPY
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
    n: int, seed_a: int, seed_b: int, backend: str = "auto", steps: int = 1, held: int = 0
) -> ChallengeWork:
    """Generate A and B, run the chain of `steps` products on the chosen backend keeping the
    last `held` states where they were computed, and commit to the last product."""
    if steps < 1:
        raise ValueError("a chain has at least one step")
    if not 0 <= held <= steps:
        raise ValueError(f"cannot hold {held} states of a {steps}-link chain")
    name, engine = select_backend(backend)
    a, b = host_operand(seed_a, n), B_OPERANDS.get(seed_b, n)
    product, seconds, kept = engine.multiply(a, b, steps, held)
    product = np.ascontiguousarray(product, dtype=np.int32)
    tree = MerkleTree(row_leaves(product, HOST_THREADS))
    return ChallengeWork(n, product, tree, seconds, name, kept, engine)


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
        module = "gpupool.agent.proof.challenge"
        argv = [sys.executable, "-m", module, str(n), str(seed_a), str(seed_b), str(steps)]
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
