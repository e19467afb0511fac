"""The mesh's figures on real wireguard-go between network namespaces (needs root).

    .venv/bin/python -m benchmarks.mesh --rounds 5

A coordinator and three agents, each in its own namespace (gpupool.testing.meshnet), book
one three-member cluster; then, between members a and b:

- ping RTT over the raw veth and over the overlay (median of `--rounds` runs of 20 pings);
- TCP throughput with iperf3 over the raw veth and over the overlay (5 s each);
- failover: the a-b link is cut until both route each other through c, then restored
  until both route each other directly again (`--rounds` times);
- map propagation: a renter's machine connects with a new key and the time until every
  member's interface holds that key (`--rounds` times).

Prints each figure and one JSON line with all of them.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from gpupool.client import Client
from gpupool.crypto.wgkeys import KeyPair
from gpupool.localnet.network import wait_for
from gpupool.testing.meshnet import MeshWorld, mesh_world

HOSTS = ["a", "b", "c"]


def avg_rtt_ms(world: MeshWorld, src: str, address: str, count: int = 20) -> float:
    out = world.in_lease(src, "ping", "-n", "-q", "-i", "0.05", "-c", str(count), address)
    match = re.search(r"= [\d.]+/([\d.]+)/", out)
    assert match, out
    return float(match.group(1))


def iperf_mbits(world: MeshWorld, src: str, dst: str, address: str, seconds: int) -> float:
    lease = world.lease_netns(dst)  # the agents seal each lease's interface in its namespace
    argv = ["ip", "netns", "exec", str(lease), "iperf3", "-s", "-1", "-B", address]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out = ""
        for _ in range(50):  # the server needs a moment to listen
            try:
                out = world.in_lease(src, "iperf3", "-c", address, "-t", str(seconds), "-f", "m")
                break
            except RuntimeError:
                time.sleep(0.1)
        match = re.search(r"([\d.]+) Mbits/sec\s+\d*\s*receiver", out)
        assert match, out
        return float(match.group(1))
    finally:
        server.kill()
        server.wait()


def failover(world: MeshWorld) -> tuple[float, float]:
    address = {n: world.overlay(n) for n in HOSTS}
    key = {n: world.public_key(n) for n in HOSTS}

    def routes(via: dict[str, str]) -> bool | None:
        ok = world.routed_via("a", address["b"]) == via["a"]
        return True if ok and world.routed_via("b", address["a"]) == via["b"] else None

    cut_at = time.monotonic()
    world.net.cut("a", "b")
    try:
        wait_for("a relay", lambda: routes({"a": key["c"], "b": key["c"]}), 60, every=0.05)
        relayed = time.monotonic() - cut_at
    finally:
        world.net.restore("a", "b")
    healed_at = time.monotonic()
    wait_for("direct again", lambda: routes({"a": key["b"], "b": key["a"]}), 60, every=0.05)
    return relayed, time.monotonic() - healed_at


def propagation(world: MeshWorld, renter: Client, cluster_id: str) -> float:
    key = KeyPair.generate()
    started = time.monotonic()
    renter.mesh_connect(cluster_id, key.public_key)

    def everywhere() -> bool | None:
        return True if all(key.public_key in world.peer_ips(n) for n in HOSTS) else None

    wait_for("the key on every member", everywhere, 30, every=0.02)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iperf-seconds", type=int, default=5)
    args = parser.parse_args()
    figures: dict[str, object] = {}
    with (
        tempfile.TemporaryDirectory(prefix="gpupool-bench-") as tmp,
        mesh_world(Path(tmp), HOSTS) as world,
    ):
        key = world.local.create_renter("bench")
        with Client(world.local.url, key) as renter:
            cluster = renter.create_cluster(devices=3, kind="cpu", hours=1, max_price_per_hour="1")
            wait_for("ready", lambda: renter.cluster(cluster.id).state == "ready" or None, 60)
            b = world.overlay("b")
            wait_for("a to reach b", lambda: world.ping("a", b) or None, 30)
            raw = world.host("b").address
            veth = [avg_rtt_ms(world, "a", raw) for _ in range(args.rounds)]
            overlay = [avg_rtt_ms(world, "a", b) for _ in range(args.rounds)]
            figures["ping_veth_ms"] = statistics.median(veth)
            figures["ping_overlay_ms"] = statistics.median(overlay)
            print(f"ping RTT a->b: raw veth {figures['ping_veth_ms']:.3f} ms, overlay "
                  f"{figures['ping_overlay_ms']:.3f} ms (median of {args.rounds})")  # fmt: skip
            figures["iperf_veth_mbits"] = iperf_mbits(world, "a", "b", raw, args.iperf_seconds)
            figures["iperf_overlay_mbits"] = iperf_mbits(world, "a", "b", b, args.iperf_seconds)
            print(f"iperf3 TCP a->b: raw veth {figures['iperf_veth_mbits']:.0f} Mbit/s, "
                  f"overlay {figures['iperf_overlay_mbits']:.0f} Mbit/s")  # fmt: skip
            relayed, back = zip(*(failover(world) for _ in range(args.rounds)), strict=True)
            figures["failover_s"] = sorted(relayed)
            figures["heal_s"] = sorted(back)
            print(f"failover to relay: median {statistics.median(relayed):.2f} s, "
                  f"max {max(relayed):.2f} s; back to direct: median "
                  f"{statistics.median(back):.2f} s, max {max(back):.2f} s")  # fmt: skip
            spread = [propagation(world, renter, cluster.id) for _ in range(args.rounds)]
            figures["propagation_s"] = sorted(spread)
            ms = sorted(round(x * 1000) for x in spread)
            print(f"map propagation (client key on all 3 members): median "
                  f"{statistics.median(ms):.0f} ms, max {ms[-1]} ms")  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
