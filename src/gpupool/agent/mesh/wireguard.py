"""The agent's WireGuard driver: its key pair, one interface per lease, applying peer maps.

- **Key.** One X25519 key pair per agent, in `STATE_DIR/wireguard.key` (base64 private key,
  mode 0600, refused when others may read it); the public key goes to the coordinator.
- **Backend.** Kernel WireGuard when `ip link add ... type wireguard` works, else the
  userspace `wireguard-go` (Debian package `wireguard-go`) run in the foreground as the
  agent's child. Both are configured with `wg` (wireguard-tools) and `ip` (iproute2).
- **Names.** `gpw` + 12 base32 characters of sha256(lease id): 15 characters, the kernel's
  limit. wireguard-go keeps its control socket in /var/run/wireguard, which every network
  namespace shares, so a name must be unique on the machine, not only in its namespace.
- **Apply** is idempotent and converges: `wg syncconf` replaces the peer set (peers no longer
  in the map go), addresses and routes are diffed against what the interface has.
- **Teardown** deletes the link (its routes and per-interface sysctls go with it), stops
  wireguard-go, removes its socket and the FORWARD rule, and leaves nothing behind.

Every command runs in the interface's network namespace (`netns`) when one is given; the
product passes None (the agent's own namespace), tests a name. With `inside` (a lease's own
namespace, agent/mesh/leasenet.py) the interface is born in `netns`, where its UDP socket
stays, and moved into `inside`, where its addresses, routes and peers are set: the classic
WireGuard namespace pattern. wireguard-go's TUN keeps working after the move (its socket
and control socket are not bound to the TUN's namespace).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gpupool.crypto.wgkeys import KeyPair
from gpupool.domain.mesh import DIRECT_PREFIX, OVERLAY_NETWORK, PeerMap

KEY_FILE = "wireguard.key"
INTERFACE_PREFIX = "gpw"
SOCKET_DIR = Path("/var/run/wireguard")
PERSISTENT_KEEPALIVE = 25  # seconds: keeps NAT mappings open on both ends
START_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0

Backend = Literal["kernel", "userspace"]


class WireGuardUnavailable(Exception):
    """A tool the driver needs is missing; the message names the Debian package."""


class WireGuardError(Exception):
    """A WireGuard, ip or iptables command failed, or the key file cannot be used."""


# -- keys -----------------------------------------------------------------------------------


def load_or_create_key(state_dir: Path) -> KeyPair:
    """The agent's WireGuard key pair, created (mode 0600) on first use."""
    path = state_dir / KEY_FILE
    if path.exists():
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            raise WireGuardError(f"{path} may be read by others; chmod 600 it")
        try:
            raw = base64.b64decode(path.read_text().strip(), validate=True)
            return KeyPair.from_private(X25519PrivateKey.from_private_bytes(raw))
        except ValueError as exc:
            raise WireGuardError(f"{path} does not hold a WireGuard private key") from exc
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pair = KeyPair.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(pair.private_key + "\n")
    return pair


def interface_name(lease_id: str, prefix: str = INTERFACE_PREFIX) -> str:
    """`prefix` + 12 base32 characters of sha256(lease id); other per-lease names (the
    lease's network namespace) share the digest, so one name leads to the other."""
    digest = base64.b32encode(hashlib.sha256(lease_id.encode()).digest()).decode().lower()
    return prefix + digest[:12]


# -- commands -------------------------------------------------------------------------------


def in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
    return [*(["ip", "netns", "exec", netns] if netns else []), *argv]


def run_in_netns(
    netns: str | None, *argv: str, stdin: str | None = None, check: bool = True
) -> str:
    try:
        done = subprocess.run(
            in_netns(netns, argv),
            check=False,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except FileNotFoundError as exc:
        raise WireGuardUnavailable(_missing(argv[0])) from exc
    if check and done.returncode != 0:
        where = f" (netns {netns})" if netns else ""
        raise WireGuardError(f"{' '.join(argv)}{where}: {done.stderr.strip()}")
    return done.stdout


def _missing(tool: str) -> str:
    package = {"wg": "wireguard-tools", "wireguard-go": "wireguard-go", "ip": "iproute2"}
    return f"{tool} is not installed: apt-get install {package.get(tool, tool)}"


def detect_backend(netns: str | None = None) -> Backend:
    """Kernel WireGuard when the kernel can make a wireguard link, else wireguard-go."""
    if not _which("wg"):
        raise WireGuardUnavailable(_missing("wg"))
    probe = INTERFACE_PREFIX + "probe" + os.urandom(3).hex()
    run_in_netns(netns, "ip", "link", "add", probe, "type", "wireguard", check=False)
    if _link_exists(netns, probe):
        run_in_netns(netns, "ip", "link", "del", probe, check=False)
        return "kernel"
    if not _which("wireguard-go"):
        raise WireGuardUnavailable(
            "the kernel has no WireGuard module and wireguard-go is not installed: "
            "apt-get install wireguard-go"
        )
    return "userspace"


def _which(tool: str) -> bool:
    return any(Path(d, tool).is_file() for d in os.environ.get("PATH", "").split(os.pathsep))


def _link_exists(netns: str | None, name: str) -> bool:
    return bool(run_in_netns(netns, "ip", "-j", "link", "show", "dev", name, check=False).strip())


def _socket_path(name: str) -> Path:
    return SOCKET_DIR / f"{name}.sock"


def _socket_owner(name: str) -> int | None:
    """The pid of the wireguard-go serving this interface, from its control socket's peer
    credentials; None when no process answers there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(_socket_path(name)))
        except OSError:
            return None
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", creds)[0]
    return pid


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when it is our child
        if not Path(f"/proc/{pid}").exists() or _zombie(pid):
            return True
        time.sleep(0.05)
    return False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def remove_interface(name: str, netns: str | None = None) -> None:
    """Tear an interface down completely; a no-op for parts already gone."""
    pid = _socket_owner(name)
    run_in_netns(
        netns, "ip", "link", "del", name, check=False
    )  # wireguard-go exits when its tun goes
    if pid is not None and not _wait_gone(pid, STOP_TIMEOUT):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if _wait_gone(pid, STOP_TIMEOUT):
                break
    _socket_path(name).unlink(missing_ok=True)
    _forward_rule(netns, name, present=False)


def leftover_interfaces(netns: str | None = None, *, sockets: bool = True) -> list[str]:
    """gpupool interfaces that exist now: wireguard-go sockets anywhere on the machine
    (unless `sockets` is False) and links in `netns`, so a restarted agent can re-adopt or
    remove them."""
    names = (
        {p.name.removesuffix(".sock") for p in SOCKET_DIR.glob(INTERFACE_PREFIX + "*.sock")}
        if sockets
        else set()
    )
    links = json.loads(run_in_netns(netns, "ip", "-j", "link", "show", check=False) or "[]")
    names |= {str(link["ifname"]) for link in links if link["ifname"].startswith(INTERFACE_PREFIX)}
    return sorted(names)


def _forward_rule(netns: str | None, name: str, *, present: bool) -> None:
    """Allow wg -> wg forwarding past a FORWARD policy of DROP (Docker sets one)."""
    rule = ["FORWARD", "-i", name, "-o", name, "-j", "ACCEPT"]
    if not _which("iptables"):
        if present:
            raise WireGuardUnavailable(_missing("iptables"))
        return
    if present:
        if not _rule_exists(netns, rule):
            run_in_netns(netns, "iptables", "-I", *rule)
        return
    while _rule_exists(netns, rule):  # a rule naming an interface outlives the interface
        run_in_netns(netns, "iptables", "-D", *rule)


def _write_sysctl(netns: str | None, key: str, value: str) -> None:
    path = "/proc/sys/" + key.replace(".", "/")
    if netns is None:
        Path(path).write_text(value)
    else:  # /proc/sys/net is per network namespace: write it from inside
        run_in_netns(netns, "sh", "-c", 'echo "$1" > "$0"', path, value)


def _rule_exists(netns: str | None, rule: list[str]) -> bool:
    argv = in_netns(netns, ["iptables", "-C", *rule])
    return subprocess.run(argv, check=False, capture_output=True, timeout=30).returncode == 0


def _in_overlay(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    if isinstance(net, ipaddress.IPv4Network):
        return net.subnet_of(OVERLAY_NETWORK)
    return net.subnet_of(DIRECT_PREFIX)


# -- the interface --------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerCounters:
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: int  # Unix seconds; 0: never
    rx_bytes: int
    tx_bytes: int


class WireGuardInterface:
    """One lease's interface. `up` and `apply` may run any number of times; a restarted
    agent builds the same object from the lease id and adopts what is already there."""

    def __init__(
        self,
        name: str,
        key: KeyPair,
        *,
        listen_port: int | None = None,
        netns: str | None = None,
        backend: Backend | None = None,
        inside: str | None = None,
    ) -> None:
        if len(name) > 15:
            raise ValueError(f"interface name {name!r} is over 15 characters")
        self.name = name
        self.key = key
        self.listen_port = listen_port  # None: WireGuard picks one; see `port`
        self.born_in = netns  # where it is created and its UDP socket lives
        self.netns = inside or netns  # where the link is, and every later command runs
        self.backend = backend or detect_backend(netns)

    def exists(self) -> bool:
        return _link_exists(self.netns, self.name)

    def up(self) -> None:
        if self.exists():
            return
        # After a crash between create and move the link is still where it was born.
        if not _link_exists(self.born_in, self.name):
            if self.backend == "kernel":
                run_in_netns(self.born_in, "ip", "link", "add", self.name, "type", "wireguard")
            else:
                self._start_wireguard_go()
        # The key and port are set before the move: the socket binds where the link is now.
        run_in_netns(self.born_in, *self._key_and_port(), stdin=self.key.private_key + "\n")
        if self.netns != self.born_in:
            assert self.netns is not None
            run_in_netns(self.born_in, "ip", "link", "set", self.name, "netns", self.netns)
        run_in_netns(self.netns, "ip", "link", "set", self.name, "up")

    def _start_wireguard_go(self) -> None:
        if _socket_owner(self.name) is None:  # a stale socket from a killed process
            _socket_path(self.name).unlink(missing_ok=True)
        with tempfile.TemporaryFile("w+") as log:
            argv = in_netns(self.born_in, ["wireguard-go", "-f", self.name])
            try:
                process = subprocess.Popen(
                    argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
                )
            except FileNotFoundError as exc:
                raise WireGuardUnavailable(_missing(argv[0])) from exc
            deadline = time.monotonic() + START_TIMEOUT
            while not (
                _link_exists(self.born_in, self.name) and _socket_owner(self.name) is not None
            ):
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    process.wait()
                    log.seek(0)
                    raise WireGuardError(f"wireguard-go {self.name} did not start: {log.read()}")
                time.sleep(0.05)

    def _key_and_port(self) -> list[str]:
        argv = ["wg", "set", self.name, "private-key", "/dev/stdin"]
        if self.listen_port is not None:
            argv += ["listen-port", str(self.listen_port)]
        return argv

    @property
    def port(self) -> int:
        return int(run_in_netns(self.netns, "wg", "show", self.name, "listen-port").strip())

    def apply(self, peer_map: PeerMap) -> None:
        """Make the interface match the map: peers, addresses, routes and forwarding."""
        self.up()
        run_in_netns(
            self.netns, "wg", "syncconf", self.name, "/dev/stdin", stdin=self._config(peer_map)
        )
        own = {f"{peer_map.address}/32", f"{peer_map.direct_address}/128"}
        self._converge("addr", own)
        self._converge("route", set(peer_map.routed_addresses()))
        self._forwarding(peer_map.forwards)

    def _config(self, peer_map: PeerMap) -> str:
        lines = ["[Interface]", f"PrivateKey = {self.key.private_key}"]
        port = self.listen_port if self.listen_port is not None else self.port
        lines.append(f"ListenPort = {port}")
        for peer in peer_map.peers:
            lines += ["", "[Peer]", f"PublicKey = {peer.public_key}"]
            if peer.endpoint:
                lines.append(f"Endpoint = {peer.endpoint}")
            lines.append(f"AllowedIPs = {', '.join(peer.allowed_ips)}")
            lines.append(f"PersistentKeepalive = {PERSISTENT_KEEPALIVE}")
        return "\n".join(lines) + "\n"

    def _converge(self, what: Literal["addr", "route"], wanted: set[str]) -> None:
        have = self._overlay_cidrs(what)
        for cidr in sorted(wanted - have):
            family = "-6" if ":" in cidr else "-4"
            run_in_netns(self.netns, "ip", family, what, "replace", cidr, "dev", self.name)
        for cidr in sorted(have - wanted):
            family = "-6" if ":" in cidr else "-4"
            run_in_netns(self.netns, "ip", family, what, "del", cidr, "dev", self.name, check=False)

    def _overlay_cidrs(self, what: Literal["addr", "route"]) -> set[str]:
        """The overlay addresses or routes on the interface now (nothing else is touched)."""
        found: set[str] = set()
        for family in ("-4", "-6"):
            if what == "addr":
                out = run_in_netns(self.netns, "ip", family, "-j", "addr", "show", "dev", self.name)
                entries = [
                    f"{a['local']}/{a['prefixlen']}"
                    for link in json.loads(out or "[]")
                    for a in link.get("addr_info", [])
                ]
            else:
                out = run_in_netns(
                    self.netns, "ip", family, "-j", "route", "show", "dev", self.name
                )
                entries = [str(r["dst"]) for r in json.loads(out or "[]")]
            for entry in entries:
                if entry == "default":
                    continue
                net = ipaddress.ip_network(entry, strict=False)
                if _in_overlay(net):
                    found.add(str(net) if what == "route" else entry)
        return found

    def _forwarding(self, on: bool) -> None:
        # Per-interface forwarding: IPv4 decides on the input device, so relaying wg -> wg
        # needs no machine-wide net.ipv4.ip_forward. The relay's kernel also sends ICMP
        # redirects (it forwards out of the interface a packet came in on); they are
        # harmless, since WireGuard routes by allowed IPs and ignores next hops.
        value = "1" if on else "0"
        _write_sysctl(self.netns, f"net.ipv4.conf.{self.name}.forwarding", value)
        _forward_rule(self.netns, self.name, present=on)

    def peers(self) -> dict[str, PeerCounters]:
        """Counters per peer public key, from `wg show dump`."""
        out: dict[str, PeerCounters] = {}
        for line in run_in_netns(self.netns, "wg", "show", self.name, "dump").splitlines()[1:]:
            key, _psk, endpoint, ips, handshake, rx, tx, _keepalive = line.split("\t")
            out[key] = PeerCounters(
                key,
                None if endpoint == "(none)" else endpoint,
                () if ips == "(none)" else tuple(ips.split(",")),
                int(handshake),
                int(rx),
                int(tx),
            )
        return out

    def down(self) -> None:
        remove_interface(self.name, self.netns)
