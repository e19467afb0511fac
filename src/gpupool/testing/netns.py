"""A test network of Linux network namespaces: hosts on one switch, for mesh tests.

    with TestNetwork(["a", "b", "c"]) as net:
        net.host("a").run("ping", "-c1", net.host("b").address)
        net.cut("a", "b")                 # iptables DROP both ways, in a's namespace
        port = net.delay_relay("c", 51820, delay_ms=20)   # a UDP relay on the switch

Every host is a namespace `gpt<run>-<host>` with `eth0` (10.77.0.2, .3, ...) joined by a veth
pair to the bridge `br0` in the switch namespace `gpt<run>-sw` (10.77.0.1), where delay
relays run. `<run>` is random per TestNetwork, so parallel runs never collide; the veths are
created straight inside their namespaces, so no name ever appears in the machine's own
namespace. Leaving the `with` block (also on an exception) kills every process left in the
namespaces (wireguard-go included, with its control socket) and deletes the namespaces,
which removes the veths and the bridge with them.

Needs root, iproute2 and iptables; `tc tbf` (`rate_limit`) works where netem does not.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from gpupool.agent.mesh.wireguard import SOCKET_DIR, remove_interface

SUBNET = ipaddress.IPv4Network("10.77.0.0/24")
SWITCH_ADDRESS = str(SUBNET.network_address + 1)


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Host:
    name: str
    netns: str
    address: str  # underlay IPv4 on eth0
    _spawned: list[subprocess.Popen[str]]

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> str:
        """Run a command inside the host; its stdout."""
        return _run(["ip", "netns", "exec", self.netns, *argv], check=check, timeout=timeout)

    def spawn(self, *argv: str) -> subprocess.Popen[str]:
        """Start a long-lived process inside the host; killed when the network closes."""
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self._spawned.append(process)
        return process


class TestNetwork:
    __test__ = False  # not a pytest test class

    def __init__(
        self, hosts: Sequence[str], *, run_id: str | None = None, prefix: str = "gpt"
    ) -> None:
        if len(hosts) > 200:
            raise ValueError("at most 200 hosts")
        self.run_id = run_id or os.urandom(3).hex()
        self.prefix = prefix  # every namespace's name starts with it
        self.switch_ns = f"{prefix}{self.run_id}-sw"
        self._names = list(hosts)
        self._spawned: list[subprocess.Popen[str]] = []
        self._hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []

    def host(self, name: str) -> Host:
        return self._hosts[name]

    @property
    def hosts(self) -> list[Host]:
        return list(self._hosts.values())

    def __enter__(self) -> TestNetwork:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _namespace(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._namespaces.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _build(self) -> None:
        sw = self.switch_ns
        self._namespace(sw)
        _run(["ip", "-n", sw, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", sw, "addr", "add", f"{SWITCH_ADDRESS}/24", "dev", "br0"])
        _run(["ip", "-n", sw, "link", "set", "br0", "up"])
        for i, name in enumerate(self._names):
            ns = f"{self.prefix}{self.run_id}-{name}"
            address = str(SUBNET.network_address + 2 + i)
            self._namespace(ns)
            port = f"p{i}"
            _run(["ip", "link", "add", "eth0", "netns", ns, "type", "veth",
                  "peer", "name", port, "netns", sw])  # fmt: skip
            _run(["ip", "-n", sw, "link", "set", port, "master", "br0", "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            self._hosts[name] = Host(name, ns, address, self._spawned)

    # -- faults ---------------------------------------------------------------------------

    def _drop_rules(self, a: str, b: str) -> list[list[str]]:
        other = self.host(b).address
        return [["INPUT", "-s", other, "-j", "DROP"], ["OUTPUT", "-d", other, "-j", "DROP"]]

    def cut(self, a: str, b: str) -> None:
        """Drop every packet between a and b (both directions), at a."""
        for rule in self._drop_rules(a, b):
            self.host(a).run("iptables", "-I", *rule)

    def restore(self, a: str, b: str) -> None:
        for rule in self._drop_rules(a, b):
            self.host(a).run("iptables", "-D", *rule, check=False)

    def rate_limit(self, name: str, rate: str = "10mbit") -> None:
        """Limit what the host sends (tc tbf on its eth0)."""
        self.host(name).run("tc", "qdisc", "replace", "dev", "eth0", "root", "tbf",
                            "rate", rate, "burst", "32kbit", "latency", "50ms")  # fmt: skip

    def delay_relay(self, target: str, port: int, delay_ms: float) -> str:
        """Start a UDP delay relay on the switch towards target:port; its "host:port".

        Give that as the endpoint of target's peer entry on one side (see
        gpupool.testing.udp_delay): the pair's RTT then grows by twice the delay.
        """
        argv = [sys.executable, "-m", "gpupool.testing.udp_delay",
                "--listen", f"{SWITCH_ADDRESS}:0",
                "--target", f"{self.host(target).address}:{port}",
                "--delay-ms", str(delay_ms)]  # fmt: skip
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.switch_ns, *argv],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self._spawned.append(process)
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith("listening "):
            raise RuntimeError(f"delay relay did not start: {line!r}")
        return line.removeprefix("listening ")

    def expose(self, name: str, port: int) -> str:
        """Make `name`'s TCP `port` reachable from the caller's namespace; "127.0.0.1:P".

        A forwarder (gpupool.testing.tcp_forward) runs inside the host's namespace on a
        listening socket made here, so the test process can talk to a server in the host
        (a coordinator) while agents in other hosts reach it over the test network.
        """
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        fd = listener.fileno()
        argv = [sys.executable, "-m", "gpupool.testing.tcp_forward", "--fd", str(fd),
                "--target", f"{self.host(name).address}:{port}"]  # fmt: skip
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.host(name).netns, *argv],
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
            pass_fds=[fd],
        )
        self._spawned.append(process)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        listener.close()  # the forwarder holds its own copy
        return address

    def own(self, namespace: str) -> None:
        """Remove `namespace`, made by someone else (a lease's), with this network: first,
        with its interfaces and processes."""
        self._namespaces.append(namespace)

    # -- cleanup --------------------------------------------------------------------------

    def close(self) -> None:
        """Remove everything this network made; safe to call more than once."""
        for process in self._spawned:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        self._spawned.clear()
        for ns in reversed(self._namespaces):
            self._empty(ns)
            _run(["ip", "netns", "del", ns], check=False)
        self._namespaces.clear()

    def _empty(self, ns: str) -> None:
        """Stop wireguard-go interfaces (and their sockets) and every other process in ns: a
        namespace with a process in it outlives `ip netns del`."""
        links = json.loads(_run(["ip", "-n", ns, "-j", "link", "show"], check=False) or "[]")
        for link in links:
            if (SOCKET_DIR / f"{link['ifname']}.sock").exists():
                remove_interface(str(link["ifname"]), ns)
        for _ in range(50):
            pids = [int(p) for p in _run(["ip", "netns", "pids", ns], check=False).split()]
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
