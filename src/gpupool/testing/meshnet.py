"""A coordinator and real agents, each in its own network namespace, with the mesh on: the
world of the mesh's acceptance tests and of `benchmarks/mesh.py`.

    with mesh_world(state_dir, ["a", "b", "c"], extra=["renter"]) as world:
        world.overlay("a")              # a's overlay IPv4, once its interface has one
        world.routed_via("a", address)  # which peer's key carries address/32 on a

The coordinator runs in host `coord` (reached from the test process through a forwarder,
`TestNetwork.expose`); agent i runs in host `agents[i]`, `agents_now` of them at once (start
the others with `world.local.start_agent(i)` after adding a supplier key, then stake its
devices with `world.local.stake_devices(key)`: devices are challenged only once staked).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpupool.agent.mesh.leasenet import netns_of_interface
from gpupool.localnet.network import LocalNetwork, wait_for
from gpupool.testing.netns import Host, TestNetwork

PORT = 8420


@dataclass
class MeshWorld:
    net: TestNetwork
    local: LocalNetwork
    state: Path
    coordinator_url: str  # as hosts on the test network reach it
    worker: dict[str, str] = field(default_factory=dict)  # host -> worker id, when known

    def host(self, name: str) -> Host:
        return self.net.host(name)

    def lease_netns(self, name: str) -> str | None:
        """The network namespace of the host's (only) lease: agents seal each lease's
        interface in one (docs/mesh.md), found from the wireguard-go the host's agent runs."""
        for pid in self.host(name).run("ip", "netns", "pids", self.host(name).netns).split():
            with contextlib.suppress(OSError):
                argv = [
                    a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a
                ]
                if argv and Path(argv[0]).name == "wireguard-go":  # wireguard-go -f NAME
                    try:
                        return netns_of_interface(argv[-1])
                    except ValueError:  # not a lease's: a renter's connected machine, say
                        continue
        return None

    def in_lease(self, name: str, *argv: str, check: bool = True) -> str:
        """Run a command inside the host's lease namespace (as the lease's processes do), or,
        on a host without a lease (the renter's connected machine), in the host's own."""
        netns = self.lease_netns(name) or self.host(name).netns
        done = subprocess.run(
            ["ip", "netns", "exec", netns, *argv],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {netns}: {done.stderr.strip()}")
        return done.stdout

    def interfaces(self, name: str) -> list[dict[str, Any]]:
        """The host's gpupool WireGuard interfaces with their IPv4 addresses."""
        try:
            out = self.in_lease(name, "ip", "-4", "-j", "addr", "show")
        except (LookupError, RuntimeError):
            return []  # not up yet
        return [i for i in json.loads(out or "[]") if i["ifname"].startswith("gpw")]

    def overlay(self, name: str, timeout: float = 60) -> str:
        def found() -> str | None:
            for interface in self.interfaces(name):
                for a in interface.get("addr_info", []):
                    return str(a["local"])
            return None

        return wait_for(f"an overlay address on {name}", found, timeout, every=0.1)

    def ping(self, src: str, address: str, wait: str = "1") -> bool:
        done = self.in_lease(src, "ping", "-n", "-c", "1", "-W", wait, address, check=False)
        return " 0% packet loss" in done

    def peer_ips(self, name: str) -> dict[str, list[str]]:
        """Per peer public key, its allowed IPs on the host's (only) lease interface."""
        interface = self.interfaces(name)[0]["ifname"]
        out = self.in_lease(name, "wg", "show", interface, "allowed-ips")
        return {k: v.split() for k, v in (line.split("\t") for line in out.splitlines())}

    def routed_via(self, name: str, address: str) -> str | None:
        """The public key of the peer whose allowed IPs hold `address`/32 on `name`."""
        return next((k for k, ips in self.peer_ips(name).items() if f"{address}/32" in ips), None)

    def public_key(self, name: str) -> str:
        interface = self.interfaces(name)[0]["ifname"]
        return self.in_lease(name, "wg", "show", interface, "public-key").strip()


def _enter(host: Host) -> list[str]:
    """Run a command in the host's network namespace only: `ip netns exec` would also remount
    /sys, hiding the cgroup hierarchy that lease sandboxes need."""
    return ["nsenter", f"--net=/run/netns/{host.netns}"]


@contextmanager
def mesh_world(
    state: Path,
    agents: Sequence[str],
    *,
    agents_now: int | None = None,
    extra: Sequence[str] = (),
    egress: bool = False,
    **options: Any,
) -> Iterator[MeshWorld]:
    """`options` go to the LocalNetwork as they are (its container engine, say)."""
    with TestNetwork(["coord", *agents, *extra]) as net:
        coord = net.host("coord")
        forwarded = net.expose("coord", PORT)
        url = f"http://{coord.address}:{PORT}"
        local = LocalNetwork(
            state,
            agents=len(agents) if agents_now is None else agents_now,
            heartbeat_seconds=1.0,
            cpu_group_size=os.cpu_count() or 1,  # one device per agent
            mesh=True,
            egress=egress,
            port=int(forwarded.rpartition(":")[2]),
            coordinator_prefix=_enter(coord),
            coordinator_listen=f"{coord.address}:{PORT}",
            agent_url=url,
            agent_prefixes={i: _enter(net.host(h)) for i, h in enumerate(agents)},
            **options,
        )
        with local:
            yield MeshWorld(net, local, state, url)
