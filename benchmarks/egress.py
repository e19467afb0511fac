"""What Internet egress costs a lease (docs/mesh.md, "Internet egress"): the time to give a
sealed namespace its way out (rules, then slirp4netns ready) and take it away, and the TCP
throughput from inside the lease to an "Internet" host, against the host's own.

    .venv/bin/python -m benchmarks.egress --rounds 5 --seconds 3

Needs root, slirp4netns, iptables and iperf3. The supplier host and the Internet host
(198.51.100.7, a documentation address) are namespaces this benchmark makes: no packet
leaves them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpupool.agent.mesh.egress import LeaseEgress
from gpupool.agent.mesh.leasenet import LeaseNetns
from gpupool.testing.netns import TestNetwork

INTERNET = "198.51.100.7"


def _iperf(prefix: list[str], seconds: int) -> float:
    done = subprocess.run(
        [*prefix, "iperf3", "-J", "-c", INTERNET, "-t", str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    )
    bits: float = json.loads(done.stdout)["end"]["sum_received"]["bits_per_second"]
    return bits / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    with (
        TestNetwork(["host", "internet"], prefix="gpb") as net,
        tempfile.TemporaryDirectory(prefix="gpb-egress-") as tmp,
    ):
        host, internet = net.host("host"), net.host("internet")
        internet.run("ip", "addr", "add", f"{INTERNET}/32", "dev", "eth0")
        host.run("ip", "route", "add", f"{INTERNET}/32", "via", internet.address)
        internet.spawn("iperf3", "-s")
        leasenet = LeaseNetns(f"gpb{net.run_id}-lease")
        net.own(leasenet.name)
        leasenet.create()
        up, down = [], []
        for _ in range(args.rounds):
            egress = LeaseEgress(leasenet, host.netns, Path(tmp))
            started = time.perf_counter()
            egress.up()
            up.append(time.perf_counter() - started)
            started = time.perf_counter()
            egress.down()
            down.append(time.perf_counter() - started)
        egress = LeaseEgress(leasenet, host.netns, Path(tmp))
        egress.up()
        try:
            time.sleep(0.5)  # iperf3 -s listening
            direct = _iperf(["ip", "netns", "exec", host.netns], args.seconds)
            through = _iperf(["nsenter", f"--net={leasenet.path}"], args.seconds)
        finally:
            egress.down()
    print(
        f"$ .venv/bin/python -m benchmarks.egress --rounds {args.rounds} --seconds {args.seconds}"
    )
    print(f"egress up (rules + slirp4netns ready): median {statistics.median(up) * 1000:.0f} ms")
    print(f"egress down: median {statistics.median(down) * 1000:.0f} ms")
    print(f"TCP to the Internet host, from the supplier host: {direct:.2f} Gbit/s")
    print(f"TCP to the Internet host, from inside the lease (slirp4netns): {through:.2f} Gbit/s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
