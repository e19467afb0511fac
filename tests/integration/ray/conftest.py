"""The Ray tier: a coordinator and three agents, each in its own network namespace on one
switch (gpupool.testing.netns), booking clusters whose members run real Ray nodes.

The test process reaches the coordinator through a forwarder into its namespace
(gpupool.testing.nsforward). Skips, saying why, without root or `ip netns`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gpupool.client import Client
from gpupool.crypto.apikeys import new_api_key
from gpupool.crypto.identity import write_secret
from gpupool.localnet.network import wait_for
from gpupool.testing.netns import Host, TestNetwork
from gpupool.testing.nsforward import forward_into

pytestmark = pytest.mark.integration

COORDINATOR_PORT = 8420
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
    """A coordinator and three agents in namespaces; `url` reaches the coordinator from here."""

    net: TestNetwork
    state_dir: Path
    url: str
    admin_key: str = field(repr=False)
    agent_url: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    supplier_keys: dict[str, str] = field(default_factory=dict, repr=False)

    def admin(self) -> Client:
        return Client(self.url, self.admin_key)

    def host(self, name: str) -> Host:
        return self.net.host(name)

    def agent_dir(self, name: str) -> Path:
        return self.state_dir / f"agent-{name}"

    def renter(self, name: str) -> Client:
        """A renter with money in its account (bookings escrow their price)."""
        with self.admin() as admin:
            created = admin.create_account("renter", name)
            admin.fund(created.id, "1000", key=f"raynet-{created.id}")
        return Client(self.url, created.api_key)

    def stake(self, supplier_key: str) -> None:
        """Fund a supplier and stake its devices, so they enter the pool."""
        with Client(self.url, supplier_key) as gp, self.admin() as admin:
            admin.fund(gp.me().id, "1000", key=f"raynet-stake-{gp.me().id}")
            for s in gp.stakes():
                if s.held_micros < s.required_micros:
                    gp.stake(s.device_id)

    def spawn(self, name: str, host: str, args: list[str], env: dict[str, str]) -> None:
        log = (self.state_dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            # nsenter enters the network namespace only: `ip netns exec` would also remount
            # /sys, hiding the cgroup hierarchy that lease sandboxes need.
            [
                "nsenter",
                f"--net=/run/netns/{self.host(host).netns}",
                sys.executable,
                "-m",
                "gpupool",
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        )
        log.close()

    def start_agent(self, name: str) -> None:
        """Start (or restart) the agent of host `name`; its region is its host name."""
        self.spawn(
            f"agent-{name}",
            name,
            [
                "agent",
                "run",
                "--coordinator",
                self.agent_url,
                "--region",
                name,
                "--state-dir",
                str(self.agent_dir(name)),
                "--cpu-group-size",
                "2",
                "--heartbeat-seconds",
                "1",
                "--bandwidth-interval",
                "0",
                "--guard-allow-cgroup",
                "/gpupool-",
                "--teardown-on-exit",
            ],
            {"GPUPOOL_KEY": self.supplier_keys[name]},
        )

    def kill_agent(self, name: str) -> None:
        """A crash: the agent dies at once, its leases' processes live on."""
        proc = self.procs.pop(f"agent-{name}")
        proc.kill()
        proc.wait()

    def host_of(self, worker_id: str) -> str:
        with self.admin() as admin:
            return next(w.region for w in admin.workers() if w.id == worker_id)

    def stop(self) -> None:
        for name in [n for n in self.procs if n != "coordinator"] + ["coordinator"]:
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def raynet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayNet]:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("raynet")
    with TestNetwork(["coord", *AGENTS]) as net:
        admin_key = new_api_key("admin")
        write_secret(state / "admin.key", admin_key.encode())
        coord = net.host("coord")
        port, close_forward = forward_into(coord.netns, coord.address, COORDINATOR_PORT)
        rn = RayNet(net, state, f"http://127.0.0.1:{port}", admin_key)
        rn.agent_url = f"http://{coord.address}:{COORDINATOR_PORT}"
        try:
            rn.spawn(
                "coordinator",
                "coord",
                [
                    "coordinator",
                    "serve",
                    "--db",
                    f"sqlite:///{state / 'coordinator.db'}",
                    "--listen",
                    f"{coord.address}:{COORDINATOR_PORT}",
                    "--admin-key-file",
                    str(state / "admin.key"),
                    "--heartbeat-seconds",
                    "1",
                    "--state-dir",
                    str(state / "coordinator"),
                    "--challenge-size",
                    "128",
                ],
                {},
            )
            with rn.admin() as admin:
                wait_for("the coordinator", lambda: admin.health() or None, 60)
                keys = [admin.create_account("supplier", f"s-{h}").api_key for h in AGENTS]
            rn.supplier_keys = dict(zip(AGENTS, keys, strict=True))
            for name in AGENTS:
                rn.start_agent(name)

            def all_up() -> bool | None:
                with rn.admin() as admin:
                    workers = [w for w in admin.workers() if w.status == "up"]
                verified = all(d.verified for w in workers for d in w.devices)
                return True if len(workers) == len(AGENTS) and verified else None

            wait_for("three agents up with verified devices", all_up, 120)
            for key in keys:
                rn.stake(key)
            yield rn
        finally:
            rn.stop()
            close_forward()
