"""Overlay probes: reachability and RTT to every peer of a lease's mesh, every second or two.

Each round pings every peer's *direct* address (the IPv6 /128 that is never relayed, see
`gpupool.domain.mesh`), so the results describe the direct WireGuard path even while traffic
takes a relay; they are exactly the `Probes` the relay rule (`step_relays`) consumes.

Why ICMP through `ping` rather than a UDP echo of our own: the peer's kernel answers, so a
probe measures the path and not whether the peer's agent is busy or restarting; there is no
listener to run, bind inside the lease's namespace, and secure; and `ping` (iputils-ping)
reports the RTT to microseconds. The cost is one short process per peer per round, started
all at once, which is small for clusters of tens of members.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from gpupool.agent.mesh.wireguard import in_netns
from gpupool.domain.mesh import PeerMap, direct_address

INTERVAL = 1.0  # seconds between rounds
# Seconds a probe waits for its answer: an answer later than this counts as lost. Well above
# the RTT of any path a cluster should use, and short enough that the relay rule's two lost
# rounds (FAILS_TO_RELAY) fit, with the map's propagation, in the 3 s the mesh promises.
TIMEOUT = 0.6

_RTT = re.compile(r"time[=<]([0-9.]+) ms")


def parse_ping(output: str) -> float | None:
    """The RTT in ms of a one-packet `ping`, or None when it got no answer."""
    match = _RTT.search(output)
    return float(match.group(1)) if match else None


def direct_targets(peer_map: PeerMap) -> dict[str, str]:
    """Peer worker id -> the address that reaches it over the direct path."""
    return {p.worker_id: direct_address(p.address) for p in peer_map.peers}


def overlay_targets(peer_map: PeerMap) -> dict[str, str]:
    """Peer worker id -> its overlay IPv4 (the path traffic takes now, relayed or not)."""
    return {p.worker_id: p.address for p in peer_map.peers}


def probe_round(
    targets: Mapping[str, str], *, netns: str | None = None, timeout: float = TIMEOUT
) -> dict[str, float | None]:
    """Ping every target once, all at the same time; id -> RTT ms, None when lost."""
    wait = f"{max(0.1, timeout):g}"  # iputils ping takes fractions of a second
    running = {
        who: subprocess.Popen(
            in_netns(netns, ["ping", "-n", "-c", "1", "-W", wait, address]),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for who, address in targets.items()
    }
    results: dict[str, float | None] = {}
    for who, process in running.items():
        out, _ = process.communicate(timeout=timeout + 10)
        results[who] = parse_ping(out) if process.returncode == 0 else None
    return results


@dataclass(frozen=True)
class ProbeReport:
    at: float  # monotonic seconds of the round's end
    rtt_ms: Mapping[str, float | None]

    def probes(self, own_id: str) -> dict[tuple[str, str], float | None]:
        """This node's part of the relay rule's `Probes`."""
        return {(own_id, peer): rtt for peer, rtt in self.rtt_ms.items()}


class OverlayProber:
    """Probes the targets of the current peer map in a background thread; the daemon reads
    `latest()` and sends it to the coordinator. `set_map` swaps the targets at any time."""

    def __init__(self, *, netns: str | None = None, interval: float = INTERVAL) -> None:
        self.netns = netns
        self.interval = interval
        self._targets: dict[str, str] = {}
        self._latest: ProbeReport | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="overlay-probe", daemon=True)

    def set_map(self, peer_map: PeerMap) -> None:
        with self._lock:
            self._targets = direct_targets(peer_map)

    def latest(self) -> ProbeReport | None:
        with self._lock:
            return self._latest

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            with self._lock:
                targets = dict(self._targets)
            rtts = probe_round(targets, netns=self.netns) if targets else {}
            with self._lock:
                self._latest = ProbeReport(time.monotonic(), rtts)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
