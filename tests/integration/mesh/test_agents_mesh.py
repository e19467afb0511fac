"""The mesh end to end: a coordinator and real agents, each in its own network namespace,
real wireguard-go between them, maps from the coordinator's control plane.

Hosts: `coord` runs the coordinator; `a`, `b`, `c` book into one cluster; `d` into another.
The steps share one network (starting it costs most of the time) and run in file order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpupool.agent.link import CoordinatorLink
from gpupool.agent.mesh.wireguard import SOCKET_DIR, interface_name
from gpupool.client import Client
from gpupool.crypto.identity import load_or_create
from gpupool.testing.meshnet import MeshWorld, mesh_world
from tests.integration.conftest import eventually, wait_state
from tests.integration.mesh.test_lease_netns import LISTEN, PROBE

pytestmark = pytest.mark.integration

HOSTS = ["a", "b", "c", "d"]
EGRESS_TARGET = "198.51.100.7"  # TEST-NET-2: exists only in this test's namespaces
EGRESS_PORT = 18342


class World(MeshWorld):
    """The shared network, with the renter and what the steps learn on the way."""

    renter: Client
    key: str  # the renter's API key
    cluster = ""
    lease = ""
    other_cluster = ""


@pytest.fixture(scope="module")
def world(netns_usable: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    state = tmp_path_factory.mktemp("mesh-net")
    with mesh_world(state, HOSTS, agents_now=3, extra=["renter", "internet"], egress=True) as base:
        key = base.local.create_renter("mesh")
        with Client(base.local.url, key) as renter:
            world = World(base.net, base.local, base.state, base.coordinator_url)
            world.renter, world.key = renter, key
            yield world


def _worker_of(world: World, index: int) -> str:
    return world.local.agent_dir(index).joinpath("identity.key").exists() and str(
        load_or_create(world.local.agent_dir(index) / "identity.key")[0].worker_id
    )


def test_members_reach_each_other_and_an_outsider_reaches_none(world: World) -> None:
    for i, name in enumerate(HOSTS[:3]):
        world.worker[name] = _worker_of(world, i)
    cluster = world.renter.create_cluster(devices=3, kind="cpu", hours=1,
                                          max_price_per_hour="1")  # fmt: skip
    world.cluster = cluster.id
    world.lease = "l-" + cluster.id.removeprefix("c-")
    wait_state(world.renter, cluster.id, "ready", 60)
    # the fourth agent, and its own cluster
    with world.local.admin() as admin:
        world.local.supplier_keys.append(admin.create_account("supplier", "d").api_key)
    world.local.start_agent(3)
    world.local.wait_workers_up(4, settled=False)
    world.local.stake_devices(world.local.supplier_keys[3])  # challenged once staked
    world.local.wait_workers_up(4)
    world.local.stake_devices(world.local.supplier_keys[3])
    world.worker["d"] = _worker_of(world, 3)
    other = world.renter.create_cluster(devices=1, kind="cpu", hours=1,
                                        max_price_per_hour="1")  # fmt: skip
    world.other_cluster = other.id
    wait_state(world.renter, other.id, "ready", 60)

    members = HOSTS[:3]
    address = {name: world.overlay(name) for name in HOSTS}
    print(f"\noverlay addresses: {address}")
    assert len(set(address.values())) == 4
    for src in members:
        for dst in members:
            if src != dst:
                eventually(lambda s=src, d=dst: world.ping(s, address[d]), 30,
                           f"{src} to reach {dst} over the overlay")  # fmt: skip
    for member in members:
        assert not world.ping("d", address[member]), f"d reached {member}"
        assert not world.ping(member, address["d"]), f"{member} reached d"
        # nor by the member's underlay address through WireGuard: d has no key of theirs
        assert world.routed_via(member, address["d"]) is None
    assert world.peer_ips("d") == {}


def _cut_and_heal(world: World) -> tuple[float, float]:
    a, b, c = "a", "b", "c"
    address = {n: world.overlay(n) for n in (a, b, c)}
    key = {n: world.public_key(n) for n in (a, b, c)}
    # a fresh mesh may relay for a few rounds while members apply their first maps
    eventually(lambda: world.routed_via(a, address[b]) == key[b]
               and world.routed_via(b, address[a]) == key[a], 30, "a direct a-b path")  # fmt: skip
    cut_at = time.monotonic()
    world.net.cut(a, b)
    try:
        eventually(lambda: world.routed_via(a, address[b]) == key[c]
                   and world.routed_via(b, address[a]) == key[c], 30,
                   "a and b to route each other through c")  # fmt: skip
        relayed = time.monotonic() - cut_at
        eventually(lambda: world.ping(a, address[b]), 10, "a to reach b through c")
    finally:
        world.net.restore(a, b)
    healed_at = time.monotonic()
    eventually(lambda: world.routed_via(a, address[b]) == key[b]
               and world.routed_via(b, address[a]) == key[a], 60,
               "a and b to go back to direct")  # fmt: skip
    back = time.monotonic() - healed_at
    assert world.ping(a, address[b])
    return relayed, back


def test_a_cut_link_relays_through_the_third_member_and_heals(world: World) -> None:
    relayed, back = _cut_and_heal(world)
    print(f"\nfailover to the relay {relayed:.2f} s after the cut; direct again {back:.2f} s "
          "after the link came back")  # fmt: skip
    assert relayed < 6.0  # the issue asks for 3 s; bound generously, the figure is printed
    assert back < 30.0


def test_a_restarted_agent_adopts_its_interface_and_rotates_its_key(world: World) -> None:
    before = world.interfaces("a")[0]["ifname"]
    old_address, old_key = world.overlay("a"), world.public_key("a")
    world.local.stop_agent(0, signal.SIGKILL)
    # and rotates its WireGuard key on the way: a new key, the same address and cluster
    (world.local.agent_dir(0) / "wireguard.key").unlink()
    world.local.start_agent(0)
    world.local.wait_workers_up(4)
    eventually(lambda: world.public_key("a") != old_key, 30, "a's new key on its interface")
    address = {n: world.overlay(n) for n in HOSTS[:3]}
    assert address["a"] == old_address
    assert [i["ifname"] for i in world.interfaces("a")] == [before]
    new_key = world.public_key("a")
    for other in ("b", "c"):
        eventually(lambda o=other: world.routed_via(o, address["a"]) == new_key, 10,
                   f"{other} to hold a's new key")  # fmt: skip
    for dst in ("b", "c"):
        eventually(lambda d=dst: world.ping("a", address[d]), 30, f"a to reach {dst}")
    # and the restarted agent follows map changes again: a relay after a cut
    relayed, _ = _cut_and_heal(world)
    assert relayed < 10.0


def test_a_renter_connects_its_machine_to_its_cluster(world: World) -> None:
    out = world.state / "renter" / "gpcmesh.conf"
    gpupool = str(Path(sys.executable).with_name("gpupool"))
    argv = [gpupool, "cluster", "connect", world.cluster, "--out", str(out), "--up", "--json",
            "--coordinator", world.coordinator_url]  # fmt: skip
    done = subprocess.run(
        ["ip", "netns", "exec", world.host("renter").netns, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GPUPOOL_KEY": world.key},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["interface"] == "gpcmesh"
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert len(answer["peers"]) == 3
    for peer in answer["peers"]:
        eventually(lambda a=peer["address"]: world.ping("renter", a), 30,
                   f"the renter's machine to reach {peer['address']}")  # fmt: skip
    # every member's map now holds the renter's machine
    client_key = world.host("renter").run("wg", "show", "gpcmesh", "public-key").strip()
    for name in HOSTS[:3]:
        assert world.routed_via(name, answer["address"]) == client_key
    # another renter's cluster is not this renter's to connect to
    other = world.renter.cluster(world.other_cluster)
    assert other.id != world.cluster
    with world.local.admin() as admin:
        stranger = admin.create_account("renter", "stranger").api_key
    done = subprocess.run(
        [
            *argv[:3],
            world.cluster,
            "--out",
            str(world.state / "x.conf"),
            "--coordinator",
            world.local.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GPUPOOL_KEY": stranger},
        check=False,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "no cluster" in done.stdout + done.stderr
    world.host("renter").run("ip", "link", "del", "gpcmesh")


def test_a_member_that_leaves_loses_the_mesh_within_two_seconds(world: World) -> None:
    address = {n: world.overlay(n) for n in HOSTS[:3]}
    # c's agent dies without cleaning up: its interface stays, as a departed (or hostile)
    # member's would. Then c's part of the lease fails: c leaves the cluster.
    world.local.stop_agent(2, signal.SIGKILL)
    identity, _ = load_or_create(world.local.agent_dir(2) / "identity.key")
    assert world.ping("c", address["a"])
    link = CoordinatorLink(world.local.url, identity, world.local.supplier_keys[2])
    device = f"{identity.worker_id}:" + _local_device(world, identity.worker_id)
    left_at = time.monotonic()
    link.report(world.lease, device, "failed", "left the cluster")
    link.close()

    def unreachable() -> bool:
        return not world.ping("c", address["a"], "0.2") and not world.ping("a", address["c"], "0.2")

    eventually(unreachable, 10, "c to lose the mesh")
    took = time.monotonic() - left_at
    print(f"\nthe leaving member lost overlay reachability {took:.2f} s after the lease change")
    assert took < 2.0 + 0.5  # the bound, plus one probe's own wait


def _local_device(world: World, worker_id: str) -> str:
    cluster = world.renter.cluster(world.cluster)
    device = next(m.device_id for m in cluster.members if m.device_id.startswith(worker_id))
    return device.split(":", 1)[1]


def test_lease_end_removes_interfaces_routes_and_keys(world: World) -> None:
    # c left: the cluster failed if c held the Ray head, else it runs on degraded
    # (docs/ray.md) and the renter ends it. Either way a and b tear their part down.
    if world.renter.cluster(world.cluster).state == "degraded":
        world.renter.terminate(world.cluster)

    def clean(name: str) -> bool:
        interface = interface_name(f"{world.worker[name]}/{world.lease}")
        links = json.loads(world.host(name).run("ip", "-j", "link", "show") or "[]")
        routes = world.host(name).run("ip", "route", "show") + world.host(name).run(
            "ip", "-6", "route", "show"
        )
        return (
            not any(x["ifname"].startswith("gpw") for x in links)
            and "100.64." not in routes
            and "fd67:" not in routes
            and not (SOCKET_DIR / f"{interface}.sock").exists()  # wireguard-go is gone
            and world.host(name).run("wg", "show", interface, check=False) == ""  # keys too
        )

    for name in ("a", "b"):
        eventually(lambda n=name: clean(n), 20, f"{name} to remove its lease interface")
    assert not clean("c")  # c's agent is dead: its interface is left over
    world.local.start_agent(2)  # a restarted agent removes interfaces of closed leases
    eventually(lambda: clean("c"), 30, "the restarted agent to remove its leftover")
    assert world.interfaces("d")  # the other cluster keeps its mesh


def test_a_lease_that_booked_egress_reaches_the_internet_and_not_the_suppliers_lan(
    world: World,
) -> None:
    # "The Internet": a documentation address on a host of this test, routed by every
    # supplier host; the LAN: the coordinator's host, which every supplier reaches.
    internet = world.host("internet")
    internet.run("ip", "addr", "add", f"{EGRESS_TARGET}/32", "dev", "eth0")
    internet.spawn(sys.executable, "-c", LISTEN, "0.0.0.0", str(EGRESS_PORT))
    for name in HOSTS:
        world.host(name).run("ip", "route", "add", f"{EGRESS_TARGET}/32", "via", internet.address)
    cluster = world.renter.create_cluster(devices=1, kind="cpu", hours=1, max_price_per_hour="1",
                                          egress=True)  # fmt: skip
    assert cluster.request["egress"] is True
    wait_state(world.renter, cluster.id, "ready", 90)
    worker = cluster.members[0].worker_id
    name = next(n for n, w in world.worker.items() if w == worker)
    lan = f"{world.host('coord').address}:{EGRESS_PORT}"
    out = f"{EGRESS_TARGET}:{EGRESS_PORT}"

    def probe() -> dict[str, str]:
        result: dict[str, str] = json.loads(world.in_lease(name, sys.executable, "-c", PROBE,
                                                           out, lan))  # fmt: skip
        return result

    eventually(lambda: probe()[out] == "connected", 20, "the lease to reach the Internet")
    assert probe()[lan] == "EHOSTUNREACH"  # the supplier's LAN, refused inside the lease
    netns = world.lease_netns(name)
    assert netns is not None and "gpe0" in world.in_lease(name, "ip", "-o", "link", "show")
    # slirp4netns' sandbox once unmounted every named namespace on the machine
    assert all(Path(f"/run/netns/{h.netns}").exists() for h in world.net.hosts)
    world.renter.terminate(cluster.id)

    def slirp_gone() -> bool:
        listed = subprocess.run(["pgrep", "-af", "slirp4netns"], capture_output=True, text=True,
                                check=False).stdout  # fmt: skip
        return f"/run/netns/{netns}" not in listed

    eventually(slirp_gone, 20, "the lease's slirp4netns to stop at lease end")
