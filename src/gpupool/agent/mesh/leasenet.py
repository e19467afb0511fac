"""A lease member's own network namespace (docs/mesh.md, "The lease's network namespace").

Each lease member gets a named namespace, `gpl` + the 12 base32 characters its WireGuard
interface's name carries (`gpw...`), so one name leads to the other and both are unique per
agent and lease on the machine. The namespace holds loopback and the lease's WireGuard
interface, moved in after it was made in the agent's namespace (wireguard.py, `inside`):
its UDP socket stays outside, its addresses and routes are set inside. Nothing else is put
there: no veth, no default route, so a process of the lease reaches the members' overlay
addresses (the routes the peer map gives) and nothing on the supplier's host or LAN, where
a connect fails with ENETUNREACH before a packet leaves.

The container joins the namespace by its path (`/run/netns/NAME`, e.g. `nsenter
--net=PATH`); the agent's forwarder (forwarder.py) dials into it. Internet egress, a booking
option off by default, adds a slirp4netns TAP and the rules that confine it (egress.py).
"""

from __future__ import annotations

from pathlib import Path

from gpupool.agent.mesh.wireguard import INTERFACE_PREFIX, interface_name, run_in_netns

NETNS_PREFIX = "gpl"
NETNS_DIR = Path("/run/netns")


def lease_netns_name(key: str, prefix: str = NETNS_PREFIX) -> str:
    """The namespace of the member `key` (worker id + "/" + lease id, as for its interface)."""
    return interface_name(key, prefix)


def netns_of_interface(interface: str, prefix: str = NETNS_PREFIX) -> str:
    """The lease namespace an agent's interface `gpw...` is moved into."""
    if not interface.startswith(INTERFACE_PREFIX):
        raise ValueError(f"{interface!r} is not a gpupool interface name")
    return prefix + interface.removeprefix(INTERFACE_PREFIX)


def _ip(*argv: str, check: bool = True) -> str:
    return run_in_netns(None, "ip", *argv, check=check)


class LeaseNetns:
    """One lease member's namespace. `create` and `destroy` may run any number of times; a
    restarted agent builds the same object from the name and adopts what is there."""

    def __init__(self, name: str) -> None:
        if not name or "/" in name or len(name) > 64:
            raise ValueError(f"{name!r} is not a usable network namespace name")
        self.name = name

    @property
    def path(self) -> str:
        """What a process joins (`nsenter --net=PATH`, setns)."""
        return str(NETNS_DIR / self.name)

    def exists(self) -> bool:
        return Path(self.path).exists()

    def create(self) -> None:
        if not self.exists():
            _ip("netns", "add", self.name)
        # Loopback is the lease's own: Ray's processes talk to each other on 127.0.0.1.
        _ip("-n", self.name, "link", "set", "lo", "up")

    def links(self) -> list[str]:
        """The links inside (loopback and the lease's interface, nothing else)."""
        out = _ip("-n", self.name, "-o", "link", "show", check=False)
        return [line.split(":", 2)[1].strip().split("@")[0] for line in out.splitlines()]

    def destroy(self) -> None:
        """Remove the namespace. Its interface goes first (wireguard.remove_interface: the
        TUN's wireguard-go and socket); a process still inside keeps an empty namespace
        alive until it exits, reaching nothing, which the sandbox's teardown ends."""
        if self.exists():
            _ip("netns", "del", self.name, check=False)


def leftover_netns(prefix: str = NETNS_PREFIX) -> list[str]:
    """Lease namespaces that exist now (every agent's on the machine: filter by name)."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))
