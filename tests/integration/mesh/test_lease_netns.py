"""A lease's own network namespace, attacked from inside (docs/mesh.md, "The lease's network
namespace"): supplier hosts `a` and `b` and a LAN host `lan` are namespaces this test makes
(prefix gpn); lease members on a and b peer through their agents' UDP sockets, a non-member
sits on the LAN. A real process in a lease's namespace tries to reach each of them."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from gpupool.agent.mesh.forwarder import Forwarder, enter_netns
from gpupool.agent.mesh.leasenet import LeaseNetns
from gpupool.agent.mesh.wireguard import WireGuardInterface
from gpupool.crypto.wgkeys import KeyPair
from gpupool.domain.mesh import Member, peer_maps
from gpupool.testing.netns import TestNetwork

pytestmark = pytest.mark.integration

WG_PORT = 51820
# The adversary: connects to each host:port and prints the errno name, or "connected".
PROBE = """
import errno, json, socket, sys
out = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    s = socket.socket()
    s.settimeout(2.0)
    try:
        s.connect((host, int(port)))
        out[target] = "connected"
    except OSError as exc:
        out[target] = errno.errorcode[exc.errno] if exc.errno else type(exc).__name__
    finally:
        s.close()
print(json.dumps(out))
"""
LISTEN = "import socket, sys\ns = socket.create_server((sys.argv[1], int(sys.argv[2])))\n" + (
    "while True:\n    s.accept()[0].close()\n"
)


@dataclass
class Sealed:
    net: TestNetwork
    lease: dict[str, LeaseNetns]  # per host: its member's namespace
    overlay: dict[str, str]
    spawned: list[subprocess.Popen[str]]

    def inside(self, host: str, argv: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net={self.lease[host].path}", *argv]

    def listen(self, argv_prefix: Sequence[str], host: str, port: int) -> None:
        self.spawned.append(
            subprocess.Popen(
                [*argv_prefix, sys.executable, "-c", LISTEN, host, str(port)], text=True
            )
        )

    def probe(self, host: str, *targets: str) -> dict[str, str]:
        argv = self.inside(host, [sys.executable, "-c", PROBE, *targets])
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
        result: dict[str, str] = json.loads(done.stdout)
        return result


@pytest.fixture
def sealed(netns_usable: None) -> Iterator[Sealed]:
    if shutil.which("wireguard-go") is None or shutil.which("nsenter") is None:
        pytest.skip("needs wireguard-go and nsenter: apt-get install wireguard-go util-linux")
    spawned: list[subprocess.Popen[str]] = []
    with TestNetwork(["a", "b", "lan"], prefix="gpn") as net:
        try:
            keys = {h: KeyPair.generate() for h in ("a", "b", "lan")}
            overlay = {"a": "100.64.7.1", "b": "100.64.7.2", "lan": "100.64.7.3"}
            member = {
                h: Member(h, overlay[h], keys[h].public_key, f"{net.host(h).address}:{WG_PORT}")
                for h in keys
            }
            lease_map = peer_maps([member["a"], member["b"]])
            # the non-member on the LAN believes it is peered with a: a never lists it
            maps = {**lease_map, "lan": peer_maps([member["a"], member["lan"]])["lan"]}
            lease = {}
            for h, key in keys.items():
                lease[h] = LeaseNetns(f"gpn{net.run_id}-lease-{h}")
                net.own(lease[h].name)
                lease[h].create()
                interface = WireGuardInterface(
                    f"gpn{net.run_id}w{h[0]}",
                    key,
                    listen_port=WG_PORT,
                    netns=net.host(h).netns,
                    backend="userspace",
                    inside=lease[h].name,
                )
                interface.apply(maps[h])
            yield Sealed(net, lease, overlay, spawned)
        finally:
            for process in spawned:
                process.kill()
                process.wait()


def _wait_listening(sealed: Sealed, host: str, target: str) -> None:
    deadline = time.monotonic() + 10
    while sealed.probe(host, target)[target] != "connected":
        assert time.monotonic() < deadline, f"{target} never listened"
        time.sleep(0.1)


def test_a_lease_reaches_its_member_and_nothing_on_the_host_the_lan_or_outside_the_mesh(
    sealed: Sealed,
) -> None:
    net, overlay = sealed.net, sealed.overlay
    host_a, lan = net.host("a"), net.host("lan")
    sealed.listen(["nsenter", f"--net=/run/netns/{host_a.netns}"], "0.0.0.0", 18331)
    sealed.listen(["nsenter", f"--net=/run/netns/{lan.netns}"], "0.0.0.0", 18332)
    sealed.listen(sealed.inside("lan", []), overlay["lan"], 18333)
    sealed.listen(sealed.inside("b", []), overlay["b"], 18334)
    sealed.listen(sealed.inside("a", []), overlay["a"], 18335)
    # every listener is up, and the host itself reaches the LAN: only the lease may not
    _wait_listening(sealed, "lan", f"{overlay['lan']}:18333")
    _wait_listening(sealed, "b", f"{overlay['b']}:18334")
    _wait_listening(sealed, "a", f"{overlay['a']}:18335")
    from_host = net.host("a").run(sys.executable, "-c", PROBE, f"{lan.address}:18332")
    assert json.loads(from_host) == {f"{lan.address}:18332": "connected"}

    seen = sealed.probe(
        "a",
        f"{host_a.address}:18331",  # the supplier's host
        f"{lan.address}:18332",  # the supplier's LAN
        "10.77.0.1:18330",  # the switch (the LAN's gateway)
        f"{overlay['lan']}:18333",  # a non-member's overlay address
        f"{overlay['b']}:18334",  # the other member
    )
    assert seen == {
        f"{host_a.address}:18331": "ENETUNREACH",
        f"{lan.address}:18332": "ENETUNREACH",
        "10.77.0.1:18330": "ENETUNREACH",
        # no route: the map gives a lease routes to its members' /32s only
        f"{overlay['lan']}:18333": "ENETUNREACH",
        f"{overlay['b']}:18334": "connected",
    }
    # The non-member has a's key and endpoint and a route, but a's WireGuard accepts no
    # handshake from a key outside its map: the SYN goes out and nothing ever answers.
    assert sealed.probe("lan", f"{overlay['a']}:18335") == {f"{overlay['a']}:18335": "TimeoutError"}
    # The lease namespace holds loopback and the WireGuard interface, nothing else; its UDP
    # socket stayed in the agent's namespace.
    assert sealed.lease["a"].links() == ["lo", f"gpn{net.run_id}wa"]
    assert f":{WG_PORT}" in host_a.run("ss", "-uln")
    assert (
        f":{WG_PORT}"
        not in subprocess.run(
            sealed.inside("a", ["ss", "-uln"]), capture_output=True, text=True, check=True
        ).stdout
    )


def test_the_forwarder_carries_http_from_the_agents_namespace_to_a_server_only_inside(
    sealed: Sealed,
) -> None:
    host_a, overlay = sealed.net.host("a"), sealed.overlay["a"]
    server = [sys.executable, "-m", "http.server", "18336", "--bind", overlay]
    sealed.spawned.append(
        subprocess.Popen(
            sealed.inside("a", server), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    )
    _wait_listening(sealed, "a", f"{overlay}:18336")
    # no way in from the agent's namespace but the forwarder
    direct = host_a.run(sys.executable, "-c", PROBE, f"{overlay}:18336")
    assert json.loads(direct) == {f"{overlay}:18336": "ENETUNREACH"}
    # the agent's thread, in the agent's namespace (host a), makes the forwarder there
    with ThreadPoolExecutor(
        1, initializer=enter_netns, initargs=(f"/run/netns/{host_a.netns}",)
    ) as agent:
        forwarder = agent.submit(
            Forwarder, sealed.lease["a"].path, (overlay, 18336), host_a.address
        ).result()
    try:
        host, port = forwarder.address
        assert host == host_a.address
        fetch = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).status)"
        got = host_a.run(sys.executable, "-c", fetch, f"http://{host}:{port}/")
        assert got.strip() == "200"
    finally:
        forwarder.close()
    refused = host_a.run(sys.executable, "-c", PROBE, f"{host}:{port}")
    assert json.loads(refused) == {f"{host}:{port}": "ECONNREFUSED"}


@pytest.fixture
def lone_lease(netns_usable: None) -> Iterator[LeaseNetns]:
    """A lease namespace with a TCP echo server on its loopback, port 18340."""
    leasenet = LeaseNetns(f"gpn{time.time_ns() % 10**6}-fwd")
    leasenet.create()
    echo = """
import socket, threading
s = socket.create_server(("127.0.0.1", 18340))
def serve(c):
    for data in iter(lambda: c.recv(65536), b""):
        c.sendall(data)
    c.close()
while True:
    threading.Thread(target=serve, args=(s.accept()[0],)).start()
"""
    server = subprocess.Popen(["nsenter", f"--net={leasenet.path}", sys.executable, "-c", echo])
    try:
        time.sleep(0.5)
        yield leasenet
    finally:
        server.kill()
        server.wait()
        leasenet.destroy()


def test_the_forwarder_refuses_past_its_limit_closes_idle_connections_and_ends_all_on_close(
    lone_lease: LeaseNetns,
) -> None:
    forwarder = Forwarder(
        lone_lease.path, ("127.0.0.1", 18340), "127.0.0.1", max_connections=1, idle_timeout=1.0
    )
    try:
        first = socket.create_connection(forwarder.address, timeout=5)
        first.sendall(b"ping")
        assert first.recv(16) == b"ping"
        second = socket.create_connection(forwarder.address, timeout=5)
        assert second.recv(16) == b""  # over the limit: closed at once, nothing forwarded
        second.close()
        started = time.monotonic()
        assert first.recv(16) == b""  # idle for a second: closed by the forwarder
        assert 0.8 < time.monotonic() - started < 3.0
        first.close()
        address = forwarder.address
        third = _echo_when_free(address)  # the slot is free again
    finally:
        forwarder.close()
    assert third.recv(16) == b""  # close() ended the live connection
    third.close()
    with pytest.raises(ConnectionRefusedError):  # the listener is gone too
        socket.create_connection(address, timeout=2)


def _echo_when_free(address: tuple[str, int]) -> socket.socket:
    """A connection that echoes: the slot of one just closed frees a moment after its EOF."""
    deadline = time.monotonic() + 3
    while True:
        sock = socket.create_connection(address, timeout=5)
        try:
            sock.sendall(b"again")
            if sock.recv(16) == b"again":
                return sock
        except ConnectionResetError:
            pass
        sock.close()
        assert time.monotonic() < deadline, "the slot never came free"
        time.sleep(0.05)
