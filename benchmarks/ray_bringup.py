"""Booking-to-ready of a 3-member Ray cluster on the local network, with its parts.

    .venv/bin/python -m benchmarks.ray_bringup --rounds 5 [--mesh]

Starts a coordinator (SQLite) and three agents (one CPU device each, so each member is its own
Ray node) as separate processes; with `--mesh` (root, wireguard-go) each in its own network
namespace with the WireGuard mesh on, so Ray binds to the overlay addresses. Each round books
3 devices and polls the cluster every 20 ms, noting when a member is first `provisioning` and
each Ray node first `starting`, `started` and `joined`:

- placement: the booking request (placement and the booking transaction), as the renter sees it
- delivery: booked until the first member is provisioning (long poll, lease sandbox)
- mesh: then until the first Ray node is starting: a node waits for its lease's overlay
  address (interface up, peer map applied); without the mesh only the scratch key and ports
- Ray head start: the head's `ray start --head` (starting -> started)
- join: head started until every node is joined (the workers' `ray start --address`, and the
  head seeing every node alive in its node list)
- ready: every node joined until the lease is `ready` (the members' ready reports)

Prints the median and the slowest of each part and of the whole, and one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from gpupool.client import Client
from gpupool.localnet.network import LocalNetwork, wait_for
from gpupool.testing.meshnet import mesh_world

POLL = 0.02
ORDER = ("starting", "started", "joined")


def _round(gp: Client) -> dict[str, float]:
    booked = time.monotonic()
    cluster = gp.create_cluster(devices=3, kind="cpu", hours=1, max_price_per_hour="1.00")
    placed = time.monotonic()
    seen: dict[tuple[str, str], float] = {}
    provisioning: float | None = None
    deadline = booked + 120
    while time.monotonic() < deadline:
        now = time.monotonic()
        if provisioning is None and any(
            m.state.value != "assigned" for m in gp.cluster(cluster.id).members
        ):
            provisioning = now
        for node in gp.cluster_ray(cluster.id).nodes:
            if node.state.value not in ORDER:
                raise SystemExit(f"a Ray node of {cluster.id} is {node.state}: {node.reason}")
            for state in ORDER:
                # a node seen in a later state has passed the earlier ones by now
                if ORDER.index(node.state.value) >= ORDER.index(state):
                    seen.setdefault((f"{node.role.value}:{node.worker_id}", state), now)
        state = gp.cluster(cluster.id).state.value
        if state == "ready":
            break
        if state == "failed":
            raise SystemExit(f"{cluster.id} failed: {gp.cluster(cluster.id).reason}")
        time.sleep(POLL)
    ready = time.monotonic()
    head = next(k for k, _ in seen if k.startswith("head:"))
    first_start = min(t for (_, s), t in seen.items() if s == "starting")
    last_join = max(t for (_, s), t in seen.items() if s == "joined")
    parts = {
        "placement": placed - booked,
        "delivery": (provisioning or first_start) - placed,
        "mesh": first_start - (provisioning or first_start),
        "ray_head_start": seen[(head, "started")] - seen[(head, "starting")],
        "join": last_join - seen[(head, "started")],
        "ready": ready - last_join,
        "total": ready - booked,
    }
    gp.terminate(cluster.id)
    wait_for(
        f"{cluster.id} to end",
        lambda: True if gp.cluster(cluster.id).state.value == "ended" else None,
        60,
    )
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mesh", action="store_true", help="agents in namespaces, on the mesh")
    args = parser.parse_args()

    rounds: list[dict[str, float]] = []
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpupool-bench-")))
        if args.mesh:
            net = stack.enter_context(mesh_world(tmp, ["a", "b", "c"])).local
        else:
            net = stack.enter_context(
                LocalNetwork(
                    tmp, agents=3, heartbeat_seconds=1.0, cpu_group_size=os.cpu_count() or 1
                )
            )
        key = net.create_renter("bench", funds="1000000")
        with Client(net.url, key) as gp:
            for i in range(args.rounds):
                rounds.append(_round(gp))
                print(
                    f"round {i + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in rounds[-1].items())
                )

    result: dict[str, object] = {"rounds": args.rounds, "members": 3, "over_mesh": args.mesh}
    for part in rounds[0]:
        values = [r[part] for r in rounds]
        result[part] = {
            "median_s": round(statistics.median(values), 3),
            "max_s": round(max(values), 3),
        }
        print(f"{part:15} median {statistics.median(values):6.2f} s   max {max(values):6.2f} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
