"""Internet egress for a lease that booked it (docs/mesh.md, "Internet egress").

A sealed lease's namespace holds loopback and its WireGuard interface, nothing else
(leasenet.py). A lease that booked egress also gets `gpe0`, the TAP device of a
slirp4netns process the agent starts in its own namespace: the lease's packets become
ordinary sockets of that one process, so the supplier's routing and firewall are left as
they are (no forwarding, no NAT rule, no veth on the host). What the lease may reach is
decided inside its namespace, before a packet reaches the TAP: an iptables chain there
rejects every private, shared, link-local, loopback, multicast and reserved range, and every
address and prefix on the host's own interfaces, so egress means the Internet and never the
supplier's host or LAN. The lease's processes cannot change that chain: the namespace
belongs to the host's user namespace, where they hold no capability.

slirp4netns runs with `--disable-host-loopback` (10.0.2.2 is not the host's 127.0.0.1),
`--enable-sandbox` and `--enable-seccomp`; its DNS forwarder (10.0.2.3:53) is the one
private address let through, so names resolve with the host's resolvers.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from gpupool.agent.mesh.leasenet import LeaseNetns
from gpupool.agent.mesh.wireguard import WireGuardError, in_netns, run_in_netns

log = logging.getLogger(__name__)

DEVICE = "gpe0"
LEASE_ADDRESS = "10.0.2.100"  # slirp4netns' defaults in its 10.0.2.0/24
GATEWAY = "10.0.2.2"
DNS = "10.0.2.3"
CHAIN = "GPUPOOL-EGRESS"
# Nothing comes in but answers: slirp4netns forwards no port, and this says so again.
_INPUT = ("INPUT", "-i", DEVICE, "-m", "conntrack", "!", "--ctstate", "ESTABLISHED,RELATED")
READY_SECONDS = 10.0
# Never reachable through egress, whatever the host routes: RFC 1918, shared (the overlay
# lives in 100.64.0.0/10), loopback, link-local (cloud metadata at 169.254.169.254),
# this-network, IETF protocol assignments, benchmarking, multicast and reserved.
BLOCKED = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
)


class EgressError(WireGuardError):
    """Egress could not be given (the lease then fails rather than run without its rules)."""


def egress_available() -> str | None:
    """None when this machine can give egress, else what is missing."""
    if os.geteuid() != 0:
        return "egress needs root"
    for tool, package in (("slirp4netns", "slirp4netns"), ("iptables", "iptables")):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            return f"{tool} is not installed: apt-get install {package}"
    return None


def host_networks(host_netns: str | None) -> list[str]:
    """Every IPv4 address on the host's interfaces and the prefix it sits in: the
    supplier's own machine and LAN, public addresses included."""
    out = run_in_netns(host_netns, "ip", "-o", "-4", "addr", "show")
    found: set[str] = set()
    for line in out.splitlines():
        words = line.split()
        if "inet" in words:
            iface = ipaddress.IPv4Interface(words[words.index("inet") + 1])
            found.update((f"{iface.ip}/32", str(iface.network)))
    return sorted(found)


def rules(blocked: Sequence[str]) -> list[list[str]]:
    """The iptables commands (after `iptables -w`) that confine `gpe0`, in order: the DNS
    forwarder, then a REJECT per blocked network; what is left leaves for the Internet."""
    out = [["-N", CHAIN], ["-A", "OUTPUT", "-o", DEVICE, "-j", CHAIN]]
    for proto in ("udp", "tcp"):
        out.append(["-A", CHAIN, "-p", proto, "-d", DNS, "--dport", "53", "-j", "ACCEPT"])
    for network in blocked:
        reject = ["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]
        out.append(["-A", CHAIN, "-d", network, *reject])
    out.append(["-A", *_INPUT, "-j", "DROP"])
    return out


class LeaseEgress:
    """The egress of one lease namespace: `up` installs the rules, then starts slirp4netns
    (a restarted agent adopts a running one); `down` stops it, and the TAP goes with it."""

    def __init__(self, leasenet: LeaseNetns, host_netns: str | None, state_dir: Path) -> None:
        self.leasenet = leasenet
        self.host_netns = host_netns
        self.pid_file = state_dir / "egress" / f"{leasenet.name}.pid"

    def _iptables(self, *argv: str, check: bool = True) -> str:
        return run_in_netns(self.leasenet.name, "iptables", "-w", *argv, check=check)

    def _install_rules(self) -> None:
        # Again from nothing each time: a restart must not stack a second copy.
        self._iptables("-D", "OUTPUT", "-o", DEVICE, "-j", CHAIN, check=False)
        self._iptables("-F", CHAIN, check=False)
        self._iptables("-X", CHAIN, check=False)
        self._iptables("-D", *_INPUT, "-j", "DROP", check=False)
        for argv in rules([*BLOCKED, *host_networks(self.host_netns)]):
            self._iptables(*argv)

    def running_pid(self) -> int | None:
        """slirp4netns' pid when one runs for this namespace (checked by its command line)."""
        try:
            pid = int(self.pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        if (
            os.path.basename(cmdline[0]) == b"slirp4netns"
            and self.leasenet.path.encode() in cmdline
        ):
            return pid
        return None

    def up(self) -> None:
        why = egress_available()
        if why is not None:
            raise EgressError(why)
        self._install_rules()  # before the device exists: no packet leaves unfiltered
        if self.running_pid() is not None:
            return
        self.pid_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        read_end, write_end = os.pipe()
        argv = [
            # --enable-sandbox pivots into a new root and detaches the old one; in a copy of
            # a mount namespace where /run/netns is shared (ip netns makes it so) that
            # detach propagated back and unmounted every named namespace on the machine.
            # A private copy keeps it to slirp4netns (unshare execs it: the pid stays).
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "slirp4netns",
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            "--enable-sandbox",
            "--enable-seccomp",
            "--netns-type=path",
            f"--ready-fd={write_end}",
            self.leasenet.path,
            DEVICE,
        ]
        log_path = self.pid_file.with_suffix(".log")
        try:
            with open(log_path, "ab") as log_file:
                process = subprocess.Popen(
                    in_netns(self.host_netns, argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    pass_fds=(write_end,),
                    start_new_session=True,  # outlives an agent restart, as the lease does
                )
        finally:
            os.close(write_end)
        try:
            self._wait_ready(read_end, process)
        finally:
            os.close(read_end)
        self.pid_file.write_text(str(process.pid))
        log.info("event=egress_up netns=%s pid=%d", self.leasenet.name, process.pid)

    def _wait_ready(self, read_end: int, process: subprocess.Popen[bytes]) -> None:
        import select

        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], 0.1)
            if ready and os.read(read_end, 1) == b"1":
                return
            if process.poll() is not None:
                tail = self.pid_file.with_suffix(".log").read_text(errors="replace")[-300:]
                raise EgressError(f"slirp4netns exited {process.returncode}: {tail.strip()}")
        process.kill()
        process.wait()
        raise EgressError(f"slirp4netns was not ready within {READY_SECONDS:.0f} s")

    def down(self) -> None:
        pid = self.running_pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            else:
                deadline = time.monotonic() + 5
                while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                    _reap(pid)
                    time.sleep(0.05)
                if Path(f"/proc/{pid}").exists():
                    os.kill(pid, signal.SIGKILL)
                    _reap(pid)
            log.info("event=egress_down netns=%s pid=%d", self.leasenet.name, pid)
        self.pid_file.unlink(missing_ok=True)
        self.pid_file.with_suffix(".log").unlink(missing_ok=True)


def _reap(pid: int) -> None:
    """Collect the child if it is this process's (it is, unless the agent restarted)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
