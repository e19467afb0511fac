"""The Ray tier: a coordinator and three agents, each in its own network namespace on one
switch with the WireGuard mesh on (gpupool.testing.meshnet), booking clusters whose members
run real Ray nodes. Skips, saying why, without root, `ip netns`, the WireGuard tools or Ray.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpupool.client import Client
from gpupool.localnet.network import SITES
from gpupool.testing.meshnet import MeshWorld, mesh_world
from gpupool.testing.netns import Host

pytestmark = pytest.mark.integration

AGENTS = ("a", "b", "c")


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "Ray namespace tests need root (network namespaces, cgroups)"
    if shutil.which("ip") is None:
        return "ip is missing: apt-get install iproute2 (scripts/bootstrap.sh does)"
    for tool in ("wg", "wireguard-go"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: the members' Ray runs over the mesh (scripts/bootstrap.sh)"
    if not Path(sys.executable).with_name("ray").exists():
        return "Ray is not installed in this environment (scripts/bootstrap.sh installs it)"
    return None


@dataclass
class RayNet:
    """The mesh world seen by agent host name ("a", "b", "c")."""

    world: MeshWorld

    @property
    def url(self) -> str:
        return self.world.local.url

    def renter(self, name: str) -> Client:
        """A renter with money in its account (bookings escrow their price)."""
        return Client(self.url, self.world.local.create_renter(name, funds="1000"))

    def host(self, name: str) -> Host:
        return self.world.host(name)

    def agent_dir(self, name: str) -> Path:
        return self.world.local.agent_dir(AGENTS.index(name))

    def agent_log(self, name: str) -> Path:
        return self.world.local.log_dir / f"agent-{AGENTS.index(name) + 1}.log"

    def host_of(self, worker_id: str) -> str:
        """The host whose agent runs `worker_id` (agent i's region is SITES[i])."""
        with self.world.local.admin() as admin:
            region = next(w.region for w in admin.workers() if w.id == worker_id)
        return next(h for i, h in enumerate(AGENTS) if SITES[i][0] == region)

    def kill_agent(self, name: str) -> None:
        """A crash: the agent dies at once, its leases' processes live on."""
        self.world.local.stop_agent(AGENTS.index(name), signal.SIGKILL)

    def start_agent(self, name: str) -> None:
        self.world.local.start_agent(AGENTS.index(name))


@pytest.fixture(scope="module")
def raynet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayNet]:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    with mesh_world(tmp_path_factory.mktemp("raynet"), AGENTS) as world:
        yield RayNet(world)
