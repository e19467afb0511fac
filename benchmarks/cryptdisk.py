"""The encrypted lease disk's cost: write and read throughput of a plain folder against the
gocryptfs disk on the same filesystem, and the time to make and mount a disk.

    .venv/bin/python -m benchmarks.cryptdisk --mib 256 --mounts 5

Writes `--mib` MiB in 1 MiB blocks and fsyncs (the figure includes getting it to the disk),
then reads it back. The read is served from the host's page cache for the underlying file
(the benchmark does not drop the machine's caches), so it measures gocryptfs's decryption and
FUSE round trips, not the disk. Mount time is `CryptDisk.create` (init + mount + chown) and
`destroy`, medians of `--mounts` runs, at the scrypt cost the agent uses and at gocryptfs's
default for comparison. Needs root, gocryptfs and /dev/fuse. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from gpupool.agent.sandbox import cryptdisk
from gpupool.agent.sandbox.cryptdisk import CryptDisk

BLOCK = 1 << 20


def _throughput(folder: Path, mib: int) -> tuple[float, float]:
    """(write MiB/s including fsync, read MiB/s) of one file of `mib` MiB in `folder`."""
    block = os.urandom(BLOCK)  # incompressible, like weights
    path = folder / "bench.bin"
    start = time.perf_counter()
    with path.open("wb") as f:
        for _ in range(mib):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    wrote = time.perf_counter() - start
    start = time.perf_counter()
    with path.open("rb") as f:
        while f.read(BLOCK):
            pass
    read = time.perf_counter() - start
    path.unlink()
    return mib / wrote, mib / read


def _mount_times(base: Path, runs: int, log_n: int) -> tuple[float, float]:
    """Median seconds of create and of destroy at scrypt cost `log_n`."""
    cryptdisk.SCRYPT_LOG_N = log_n
    creates, destroys = [], []
    for i in range(runs):
        start = time.perf_counter()
        disk = CryptDisk.create(base / f"mount-{log_n}-{i}")
        creates.append(time.perf_counter() - start)
        start = time.perf_counter()
        disk.destroy()
        destroys.append(time.perf_counter() - start)
    return statistics.median(creates), statistics.median(destroys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--mounts", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default /tmp)")
    args = parser.parse_args()
    cryptdisk.check_available()
    agent_cost = cryptdisk.SCRYPT_LOG_N
    base = Path(tempfile.mkdtemp(prefix="gpd-bench-cryptdisk-", dir=args.dir))
    disk = None
    try:
        plain_dir = base / "plain"
        plain_dir.mkdir()
        plain = _throughput(plain_dir, args.mib)
        disk = CryptDisk.create(base / "lease")
        crypt = _throughput(disk.plain, args.mib)
        disk.destroy()
        mounts = {n: _mount_times(base, args.mounts, n) for n in (agent_cost, 16)}
    finally:
        cryptdisk.SCRYPT_LOG_N = agent_cost
        if disk is not None:
            disk.destroy()
        shutil.rmtree(base, ignore_errors=True)
    print(f"{'':<28}{'write MiB/s':>12}{'read MiB/s':>12}")
    print(f"{'plain folder':<28}{plain[0]:>12.0f}{plain[1]:>12.0f}")
    print(f"{'gocryptfs disk':<28}{crypt[0]:>12.0f}{crypt[1]:>12.0f}")
    for n, (create, destroy) in mounts.items():
        which = "agent" if n == agent_cost else "gocryptfs default"
        ms = f"{create * 1000:.0f} ms, destroy {destroy * 1000:.0f} ms"
        print(f"create+mount logN={n} ({which}): {ms}")
    result = {
        "mib": args.mib,
        "plain_write_mibs": round(plain[0]),
        "plain_read_mibs": round(plain[1]),
        "crypt_write_mibs": round(crypt[0]),
        "crypt_read_mibs": round(crypt[1]),
        "mount": {
            str(n): {"create_ms": round(c * 1000), "destroy_ms": round(d * 1000)}
            for n, (c, d) in mounts.items()
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
