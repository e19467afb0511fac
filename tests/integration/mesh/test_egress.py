"""Internet egress, attacked from inside (docs/mesh.md, "Internet egress"): the supplier's
host, a LAN host and an "Internet" host (a documentation address, 198.51.100.7, routed by
the supplier's host) are namespaces this test makes (prefix gpn). A lease namespace with
egress reaches the Internet host and nothing of the supplier's; one without reaches nothing;
the lease cannot lift its own rules."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpupool.agent.mesh.egress import BLOCKED, DEVICE, LeaseEgress, egress_available
from gpupool.agent.mesh.leasenet import LeaseNetns
from gpupool.testing.netns import TestNetwork
from tests.integration.mesh.test_lease_netns import PROBE

pytestmark = pytest.mark.integration

INTERNET = "198.51.100.7"  # TEST-NET-2: never routed anywhere but in this test's namespaces
PORT = 18341
# Records who connected: the Internet host must see the supplier's address, not the lease's.
LISTEN = """
import socket, sys
s = socket.create_server(("0.0.0.0", int(sys.argv[1])))
while True:
    c, peer = s.accept()
    print(peer[0], flush=True)
    c.close()
"""


@dataclass
class World:
    net: TestNetwork
    sealed: LeaseNetns  # with egress
    plain: LeaseNetns  # without
    egress: LeaseEgress
    internet_log: subprocess.Popen[str]

    def probe(self, lease: LeaseNetns, *targets: str) -> dict[str, str]:
        argv = ["nsenter", f"--net={lease.path}", sys.executable, "-c", PROBE, *targets]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
        result: dict[str, str] = json.loads(done.stdout)
        return result


@pytest.fixture
def world(netns_usable: None, tmp_path: Path) -> Iterator[World]:
    why = egress_available()
    if why is not None or shutil.which("nsenter") is None:
        pytest.skip(why or "needs nsenter")
    with TestNetwork(["host", "lan", "internet"], prefix="gpn") as net:
        host, lan, internet = net.host("host"), net.host("lan"), net.host("internet")
        internet.run("ip", "addr", "add", f"{INTERNET}/32", "dev", "eth0")
        host.run("ip", "route", "add", f"{INTERNET}/32", "via", internet.address)
        internet_log = internet.spawn(sys.executable, "-u", "-c", LISTEN, str(PORT))
        for h in (host, lan):
            h.spawn(sys.executable, "-c", LISTEN, str(PORT))
        sealed = LeaseNetns(f"gpn{net.run_id}-egress")
        plain = LeaseNetns(f"gpn{net.run_id}-plain")
        egress = LeaseEgress(sealed, host.netns, tmp_path)
        try:
            for lease in (sealed, plain):
                net.own(lease.name)
                lease.create()
            egress.up()
            yield World(net, sealed, plain, egress, internet_log)
        finally:
            egress.down()


def _wait_listening(world: World, target: str) -> None:
    deadline = time.monotonic() + 10
    while world.probe(world.sealed, target)[target] != "connected":
        assert time.monotonic() < deadline, f"{target} never listened"
        time.sleep(0.1)


def test_egress_reaches_the_internet_and_nothing_of_the_suppliers(world: World) -> None:
    host, lan = world.net.host("host"), world.net.host("lan")
    _wait_listening(world, f"{INTERNET}:{PORT}")
    # the connection left as the supplier host's own socket: no lease address outside
    assert world.internet_log.stdout is not None
    assert world.internet_log.stdout.readline().strip() == host.address

    seen = world.probe(
        world.sealed,
        f"{host.address}:{PORT}",  # the supplier's host
        f"{lan.address}:{PORT}",  # the supplier's LAN
        f"10.0.2.2:{PORT}",  # slirp's way to the host's loopback
        "169.254.169.254:80",  # a cloud's metadata service
        "100.64.9.9:80",  # an overlay address not of this lease
        "192.168.1.1:80",
        "172.16.0.1:80",
    )
    assert seen == dict.fromkeys(seen, "EHOSTUNREACH"), seen  # REJECT admin-prohibited
    # the host itself reaches its LAN: only the lease may not
    from_host = host.run(sys.executable, "-c", PROBE, f"{lan.address}:{PORT}")
    assert json.loads(from_host) == {f"{lan.address}:{PORT}": "connected"}

    # a lease that did not book egress has no way out at all
    target = f"{INTERNET}:{PORT}"
    assert world.probe(world.plain, target) == {target: "ENETUNREACH"}
    assert set(world.plain.links()) == {"lo"}
    assert set(world.sealed.links()) == {"lo", DEVICE}


def test_the_lease_cannot_lift_its_rules_and_they_cover_every_blocked_range(
    world: World,
) -> None:
    # A lease process: its own user namespace (root there), no capability in the host's,
    # which owns the lease's network namespace.
    drop = ["setpriv", "--reuid=1900000123", "--regid=1900000123", "--clear-groups"]
    drop += ["--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"]
    drop += ["unshare", "--user", "--map-root-user"]
    attack = subprocess.run(
        ["nsenter", f"--net={world.sealed.path}", *drop, "iptables", "-w", "-F", "GPUPOOL-EGRESS"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert attack.returncode != 0
    assert "Permission denied" in attack.stderr or "Operation not permitted" in attack.stderr
    listed = subprocess.run(
        ["ip", "netns", "exec", world.sealed.name, "iptables", "-w", "-S", "GPUPOOL-EGRESS"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    for network in BLOCKED:
        assert f"-d {network} -j REJECT" in listed, network
    assert f"-d {world.net.host('host').address}/32 -j REJECT" in listed


def test_down_removes_the_device_and_a_restart_adopts_a_running_egress(
    world: World, tmp_path: Path
) -> None:
    pid = world.egress.running_pid()
    assert pid is not None
    again = LeaseEgress(world.sealed, world.net.host("host").netns, tmp_path)
    again.up()  # a restarted agent: the same slirp4netns, the rules laid again once
    assert again.running_pid() == pid
    listed = subprocess.run(
        ["ip", "netns", "exec", world.sealed.name, "iptables", "-w", "-S", "OUTPUT"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert listed.count("GPUPOOL-EGRESS") == 1
    again.down()
    assert again.running_pid() is None
    deadline = time.monotonic() + 5
    while DEVICE in world.sealed.links():
        assert time.monotonic() < deadline, "the TAP outlived slirp4netns"
        time.sleep(0.05)
    target = f"{INTERNET}:{PORT}"
    assert world.probe(world.sealed, target) == {target: "ENETUNREACH"}
