"""Booking-to-ready and terminate-to-ended times on the local network (real processes).

    .venv/bin/python -m benchmarks.booking --rounds 20 --agents 3 --devices 2

Starts a coordinator (SQLite) and the agents as separate processes, then books, waits for
`ready`, terminates and waits for `ended`, `--rounds` times. Prints the median and the
slowest of each, and one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from gpupool.client import Client
from gpupool.localnet.network import LocalNetwork, wait_for


def _wait_state(gp: Client, cluster_id: str, state: str) -> float:
    started = time.monotonic()
    wait_for(
        f"{cluster_id} to be {state}",
        lambda: True if gp.cluster(cluster_id).state.value == state else None,
        60,
        every=0.01,
    )
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--devices", type=int, default=2)
    args = parser.parse_args()

    ready: list[float] = []
    ended: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="gpupool-bench-") as tmp,
        LocalNetwork(Path(tmp), agents=args.agents, ray=False) as net,
    ):
        key = net.create_renter("bench", funds="1000000")
        with Client(net.url, key) as gp:
            for _ in range(args.rounds):
                booked = time.monotonic()
                cluster = gp.create_cluster(
                    devices=args.devices, kind="cpu", hours=1, max_price_per_hour="1.00"
                )
                _wait_state(gp, cluster.id, "ready")
                ready.append(time.monotonic() - booked)
                stopping = time.monotonic()
                gp.terminate(cluster.id)
                _wait_state(gp, cluster.id, "ended")
                ended.append(time.monotonic() - stopping)

    def ms(values: list[float]) -> dict[str, float]:
        return {
            "median_ms": round(statistics.median(values) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1),
        }

    result = {"rounds": args.rounds, "booking_to_ready": ms(ready), "terminate_to_ended": ms(ended)}
    for name, figures in (("booking -> ready", ready), ("terminate -> ended", ended)):
        print(f"{name:20} median {ms(figures)['median_ms']} ms, max {ms(figures)['max_ms']} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
