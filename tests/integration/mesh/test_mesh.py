"""The encrypted mesh between network namespaces: real wireguard-go, maps from the domain
rules, the agent's driver and prober; no coordinator."""

from __future__ import annotations

import re
import statistics
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import pytest

from gpupool.agent.mesh.overlay_probe import direct_targets, probe_round
from gpupool.agent.mesh.wireguard import (
    SOCKET_DIR,
    KeyPair,
    WireGuardInterface,
    _socket_owner,
    interface_name,
    leftover_interfaces,
)
from gpupool.domain.mesh import (
    GOOD_TO_DIRECT,
    Member,
    Pair,
    PathState,
    PeerMap,
    peer_maps,
    relay_decisions,
    step_relays,
)
from gpupool.testing.netns import TestNetwork

pytestmark = pytest.mark.integration

PORT = 51820
NetworkFactory = Callable[[Sequence[str]], TestNetwork]


@dataclass
class Mesh:
    """One cluster's members on a TestNetwork, each with its own interface."""

    net: TestNetwork
    members: list[Member]
    interfaces: dict[str, WireGuardInterface]
    maps: dict[str, PeerMap] = field(default_factory=dict)
    states: dict[Pair, PathState] = field(default_factory=dict)

    def apply(self, relays: dict[Pair, str] | None = None) -> None:
        self.maps = peer_maps(self.members, relays)
        for host, interface in self.interfaces.items():
            interface.apply(self.maps[host])

    def probe_and_decide(self) -> dict[Pair, str]:
        """One round of the real loop: every member probes, the rule decides, maps apply."""
        probes: dict[tuple[str, str], float | None] = {}
        for host in self.interfaces:
            rtts = probe_round(direct_targets(self.maps[host]), netns=self.net.host(host).netns)
            probes.update({(host, peer): rtt for peer, rtt in rtts.items()})
        self.states = step_relays(list(self.interfaces), self.states, probes)
        decisions = relay_decisions(self.states)
        self.apply(decisions)
        return decisions

    def address(self, host: str) -> str:
        return next(m.address for m in self.members if m.worker_id == host)


def build_mesh(net: TestNetwork, hosts: Sequence[str], lease: str, first: int) -> Mesh:
    members, interfaces = [], {}
    for i, host in enumerate(hosts):
        key = KeyPair.generate()
        h = net.host(host)
        members.append(Member(host, f"100.64.0.{first + i}", key.public_key, f"{h.address}:{PORT}"))
        name = interface_name(f"{net.run_id}/{lease}/{host}")
        interfaces[host] = WireGuardInterface(name, key, listen_port=PORT, netns=h.netns)
    mesh = Mesh(net, members, interfaces)
    mesh.apply()
    return mesh


def ping(net: TestNetwork, host: str, address: str, count: int = 1) -> str | None:
    """ping's output when every packet came back, else None."""
    try:
        return net.host(host).run(
            "ping", "-n", "-q" if count > 5 else "-v", "-c", str(count), "-i", "0.05", "-W", "1",
            address, timeout=count + 10,
        )  # fmt: skip
    except RuntimeError:
        return None


def ttl(output: str) -> int:
    match = re.search(r"ttl=(\d+)", output)
    assert match, output
    return int(match.group(1))


@pytest.fixture
def mesh(test_network: NetworkFactory) -> Iterator[Mesh]:
    net = test_network(["a", "b", "c", "d"])
    mesh = build_mesh(net, ["a", "b", "c"], "lease-1", first=1)
    try:
        yield mesh
    finally:
        for interface in mesh.interfaces.values():
            interface.down()


def test_members_reach_each_other_over_the_overlay(mesh: Mesh) -> None:
    for src in "abc":
        for dst in "abc":
            if src != dst:
                assert ping(mesh.net, src, mesh.address(dst)), f"{src} cannot reach {dst}"


def test_applying_the_same_map_again_changes_nothing(mesh: Mesh) -> None:
    before = {h: i.peers() for h, i in mesh.interfaces.items()}
    routes = mesh.net.host("a").run("ip", "route")
    mesh.apply()
    assert mesh.net.host("a").run("ip", "route") == routes
    for host, interface in mesh.interfaces.items():
        after = interface.peers()
        assert {k: v.allowed_ips for k, v in after.items()} == {
            k: v.allowed_ips for k, v in before[host].items()
        }
    assert ping(mesh.net, "a", mesh.address("b"))


def test_a_node_of_another_cluster_reaches_nobody_and_nobody_reaches_it(mesh: Mesh) -> None:
    # d belongs to another lease; it even lists a, b and c as its peers with their real
    # keys and endpoints, but their maps do not hold d's key, so they drop its handshakes.
    outsider = build_mesh(mesh.net, ["d"], "lease-2", first=9)
    try:
        d = outsider.interfaces["d"]
        intruder_map = peer_maps([*mesh.members, outsider.members[0]])["d"]
        d.apply(intruder_map)
        for host in "abc":
            assert ping(mesh.net, "d", mesh.address(host)) is None, f"d reached {host}"
            assert ping(mesh.net, host, "100.64.0.9") is None, f"{host} reached d"
        for interface in mesh.interfaces.values():
            assert d.key.public_key not in interface.peers()
        assert all(p.latest_handshake == 0 for p in d.peers().values())
        # the cluster itself still works
        assert ping(mesh.net, "a", mesh.address("b"))
    finally:
        outsider.interfaces["d"].down()


def relayed_bytes(mesh: Mesh) -> int:
    c = mesh.interfaces["c"].peers()
    return sum(c[m.public_key].rx_bytes + c[m.public_key].tx_bytes for m in mesh.members[:2])


def test_a_cut_link_goes_through_the_third_member_and_heals_back(mesh: Mesh) -> None:
    net, b = mesh.net, mesh.address("b")
    mesh.maps = peer_maps(mesh.members)
    direct = ping(net, "a", b)
    assert direct and ttl(direct) == 64

    net.cut("a", "b")
    assert ping(net, "a", b) is None
    decisions: dict[Pair, str] = {}
    for _ in range(5):
        decisions = mesh.probe_and_decide()
        if decisions:
            break
    assert decisions == {("a", "b"): "c"}
    assert mesh.interfaces["c"].peers()  # c forwards now
    before = relayed_bytes(mesh)
    relayed = ping(net, "a", b, count=10)
    assert relayed, "a cannot reach b through c"
    assert ping(net, "b", mesh.address("a"))
    assert ttl(ping(net, "a", b) or "") == 63  # one forwarding hop: c
    assert relayed_bytes(mesh) > before + 10 * 84 * 2  # ten pings in and out of c, both legs

    net.restore("a", "b")
    for _ in range(GOOD_TO_DIRECT + 3):
        if not mesh.probe_and_decide():
            break
    assert relay_decisions(mesh.states) == {}
    back = ping(net, "a", b)
    assert back and ttl(back) == 64
    before = relayed_bytes(mesh)
    assert ping(net, "a", b, count=10)
    assert relayed_bytes(mesh) < before + 10 * 84  # keepalives at most, no ping through c


def test_teardown_leaves_no_interface_route_process_socket_or_rule(mesh: Mesh) -> None:
    mesh.apply({("a", "b"): "c"})  # c forwards: it has a FORWARD rule too
    names = {h: i.name for h, i in mesh.interfaces.items()}
    pids = {h: _socket_owner(n) for h, n in names.items()}
    assert all(pids.values())
    for interface in mesh.interfaces.values():
        interface.down()
    for host, name in names.items():
        h = mesh.net.host(host)
        assert name not in h.run("ip", "link")
        assert "100.64." not in h.run("ip", "route")
        assert "fd67:" not in h.run("ip", "-6", "route")
        assert name not in h.run("iptables", "-S")
        assert not (SOCKET_DIR / f"{name}.sock").exists()
        assert name not in leftover_interfaces(h.netns)
        outside = subprocess.run(
            ["ip", "netns", "pids", h.netns], check=False, capture_output=True, text=True
        )
        assert not outside.stdout.split(), f"processes left in {h.netns}"
        pid = pids[host]
        assert pid is not None
        assert not _running(pid), f"wireguard-go {pid} still runs"
    # down twice is fine
    mesh.interfaces["a"].down()


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_restarted_agent_adopts_its_interface(mesh: Mesh) -> None:
    old = mesh.interfaces["a"]
    assert old.name in leftover_interfaces(old.netns)
    again = WireGuardInterface(old.name, old.key, listen_port=PORT, netns=old.netns)
    pid = _socket_owner(old.name)
    again.apply(mesh.maps["a"])
    assert _socket_owner(old.name) == pid  # the same wireguard-go, not a second one
    assert ping(mesh.net, "a", mesh.address("b"))


def test_wan_delay_through_the_udp_relay(mesh: Mesh) -> None:
    # a reaches b's WireGuard through a relay on the switch that holds each datagram 20 ms
    relay = mesh.net.delay_relay("b", PORT, delay_ms=20)
    a_map = mesh.maps["a"]
    peers = tuple(replace(p, endpoint=relay) if p.worker_id == "b" else p for p in a_map.peers)
    mesh.interfaces["a"].apply(replace(a_map, peers=peers))
    out = ping(mesh.net, "a", mesh.address("b"), count=10)
    assert out, "no answer through the delay relay"
    avg = float(re.search(r"= [\d.]+/([\d.]+)/", out).group(1))  # type: ignore[union-attr]
    print(f"RTT a->b through a 20 ms delay relay: {avg:.1f} ms")
    assert avg >= 35.0  # two 20 ms legs; generous


def test_measure_overlay_rtt_against_raw_veth(mesh: Mesh) -> None:
    def avg_rtt(address: str) -> float:
        out = ping(mesh.net, "a", address, count=50)
        assert out
        match = re.search(r"= [\d.]+/([\d.]+)/", out)
        assert match
        return float(match.group(1))

    ping(mesh.net, "a", mesh.address("b"), count=3)  # warm up the session
    veth = statistics.median(avg_rtt(mesh.net.host("b").address) for _ in range(3))
    overlay = statistics.median(avg_rtt(mesh.address("b")) for _ in range(3))
    print(f"ping RTT a->b: raw veth {veth:.3f} ms, WireGuard overlay {overlay:.3f} ms")
    assert overlay < 100 * max(veth, 0.05)  # only a sanity bound


def test_iperf3_over_the_overlay_with_a_rate_limit(mesh: Mesh) -> None:
    mesh.net.rate_limit("a", "20mbit")
    server = mesh.net.host("b").spawn("iperf3", "-s", "-1", "-B", mesh.address("b"))
    try:
        out = ""
        for _ in range(20):  # the server needs a moment to listen
            try:
                out = mesh.net.host("a").run(
                    "iperf3", "-c", mesh.address("b"), "-t", "2", "-f", "m", timeout=30
                )
                break
            except RuntimeError:
                subprocess.run(["sleep", "0.2"], check=True)
        match = re.search(r"([\d.]+) Mbits/sec\s+\d*\s*sender", out)
        assert match, out
        mbits = float(match.group(1))
        print(f"iperf3 a->b over the overlay with a 20 Mbit/s tbf on a: {mbits:.1f} Mbit/s")
        assert 2 < mbits < 30
    finally:
        server.kill()
        server.wait()
