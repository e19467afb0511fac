"""What sealing a lease's network costs: a namespace made, a wireguard-go interface started,
keyed and moved in, then both removed (docs/mesh.md, "The lease's network namespace").

    .venv/bin/python -m benchmarks.lease_netns --rounds 5

Needs root and wireguard-go. The interfaces are born in this process's namespace (as the
agent's are) and moved at once; nothing sends a packet.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from gpupool.agent.mesh.leasenet import LeaseNetns
from gpupool.agent.mesh.wireguard import WireGuardInterface
from gpupool.crypto.wgkeys import KeyPair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    run = os.urandom(2).hex()
    up, down = [], []
    for i in range(args.rounds):
        leasenet = LeaseNetns(f"gpb{run}{i}")
        interface = WireGuardInterface(
            f"gpb{run}w{i}", KeyPair.generate(), backend="userspace", inside=leasenet.name
        )
        started = time.perf_counter()
        try:
            leasenet.create()
            interface.up()
            up.append(time.perf_counter() - started)
        finally:
            started = time.perf_counter()
            interface.down()
            leasenet.destroy()
            down.append(time.perf_counter() - started)
    print(f"$ .venv/bin/python -m benchmarks.lease_netns --rounds {args.rounds}")
    print(f"sealed lease network up: median {statistics.median(up) * 1000:.0f} ms")
    print(f"sealed lease network down: median {statistics.median(down) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
