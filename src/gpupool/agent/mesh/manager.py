"""The agent's side of the mesh (docs/mesh.md): one WireGuard interface per open lease,
kept in line with the peer map the coordinator serves.

For each lease the agent runs (`sync`), a `LeaseMesh` thread brings the interface up (or
adopts it after a restart), reports where it listens, long-polls the lease's peer map and
applies each new version, probes every peer's direct address each second and reports the
results, from which the coordinator decides relays. When the lease ends the interface goes,
and its peers' keys and routes with it. The agent's own key pair stays in its state folder.

Sealed (the default), each lease member's interface lives in the member's own network
namespace (leasenet.py), whose path (`netns_path`) the lease's processes join, and services
inside are reached from the agent's namespace through forwarders (`forward`).

Without root or the WireGuard tools the agent runs without the mesh, and says why once;
`overlay_address` is then None and whoever binds a service to the mesh (Ray) falls back to
the machine's ordinary addresses.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from gpupool.agent.files import write_json
from gpupool.agent.link import CoordinatorLink, LinkError
from gpupool.agent.mesh.egress import EgressError, LeaseEgress
from gpupool.agent.mesh.forwarder import Forwarder
from gpupool.agent.mesh.leasenet import LeaseNetns, netns_of_interface
from gpupool.agent.mesh.overlay_probe import OverlayProber
from gpupool.agent.mesh.wireguard import (
    Backend,
    WireGuardError,
    WireGuardInterface,
    WireGuardUnavailable,
    detect_backend,
    interface_name,
    leftover_interfaces,
    load_or_create_key,
    remove_interface,
)
from gpupool.crypto.wgkeys import KeyPair
from gpupool.domain.mesh import PeerMap
from gpupool.wire.mesh import MeshMapOut

log = logging.getLogger("gpupool.agent.mesh.manager")

POLL_SECONDS = 20.0  # how long one long poll for the map waits on the coordinator
RETRY_SECONDS = 1.0
PROBE_SECONDS = 1.0  # between probe rounds
REPORT_CHECK_SECONDS = 0.1  # how soon a finished round is reported
INTERFACES_FILE = "mesh-interfaces.json"  # the interfaces this agent made, for restarts


def local_address_towards(url: str) -> str:
    """The local address this machine uses to reach the coordinator (no packet is sent):
    peers reach this agent's interfaces there unless the operator advertises another."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((host, parts.port or 80))
        address: str = sock.getsockname()[0]
    return address


class LeaseMesh:
    """One lease's interface and its loops (map poll, probes, reports)."""

    def __init__(
        self,
        lease_id: str,
        link: CoordinatorLink,
        name: str,
        key: KeyPair,
        backend: Backend,
        host: str,
        netns: str | None,
        sealed: bool = True,
        egress_dir: Path | None = None,
    ) -> None:
        self.lease_id = lease_id
        self.link = link
        self.leasenet = LeaseNetns(netns_of_interface(name)) if sealed else None
        # Internet egress (egress.py) where the lease booked it; only a sealed lease has a
        # namespace to give it in (an unsealed one shares the agent's network anyway).
        self.egress = (
            LeaseEgress(self.leasenet, netns, egress_dir)
            if egress_dir is not None and self.leasenet is not None
            else None
        )
        self.egress_problem: str | None = None
        inside = self.leasenet.name if self.leasenet is not None else None
        self.interface = WireGuardInterface(name, key, netns=netns, backend=backend, inside=inside)
        self.host = host
        self.prober = OverlayProber(netns=self.interface.netns, interval=PROBE_SECONDS)
        self._forwarders: dict[tuple[str, int, str], Forwarder] = {}
        self.peer_map: PeerMap | None = None
        self.version = ""
        self._stop = threading.Event()
        self._lock = threading.Lock()  # apply and remove never interleave
        self._removed = False
        self._threads = [
            threading.Thread(target=self._poll_loop, name=f"mesh-{lease_id}", daemon=True),
            threading.Thread(target=self._report_loop, name=f"probes-{lease_id}", daemon=True),
        ]

    @property
    def base(self) -> str:
        return f"/v1/agent/mesh/leases/{self.lease_id}"

    def start(self) -> None:
        with self._lock:
            if self.leasenet is not None:
                self.leasenet.create()
            self.interface.up()  # adopts the interface a previous run left
            if self.egress is not None:
                try:
                    self.egress.up()
                except (EgressError, WireGuardError, OSError) as exc:
                    # the mesh stays sealed, without a way out; the daemon fails the lease
                    self.egress_problem = f"egress: {exc}"
                    log.error("event=egress_failed lease=%s reason=%s", self.lease_id, exc)
        self.prober.start()
        for thread in self._threads:
            thread.start()

    def forward(self, host: str, port: int, listen_host: str, listen_port: int = 0) -> str:
        """`host:port` in the agent's namespace that reaches `host:port` inside the lease's
        namespace (the same one again for the same arguments)."""
        if self.leasenet is None:
            raise WireGuardError("the lease has no namespace of its own to forward into")
        with self._lock:
            if self._removed:
                raise WireGuardError(f"the mesh of {self.lease_id} is gone")
            key = (host, port, listen_host)
            if key not in self._forwarders:
                self._forwarders[key] = Forwarder(
                    self.leasenet.path, (host, port), listen_host, listen_port=listen_port
                )
            bound_host, bound_port = self._forwarders[key].address
        log.info(
            "event=forward_up lease=%s upstream=%s:%d listen=%s:%d",
            self.lease_id,
            host,
            port,
            bound_host,
            bound_port,
        )
        return f"{bound_host}:{bound_port}"

    def _close_forwarders(self) -> None:
        for forwarder in self._forwarders.values():
            forwarder.close()
        self._forwarders.clear()

    def remove(self) -> None:
        """Stop the loops and remove the interface (its peers, keys and routes go with it),
        the forwarders and the lease's namespace."""
        self._stop.set()
        self.prober.stop()
        with self._lock:
            self._removed = True
            self._close_forwarders()
            self.interface.down()
            if self.egress is not None:
                self.egress.down()
            if self.leasenet is not None:
                self.leasenet.destroy()

    def stop(self) -> None:
        """Stop the loops and leave the interface up (the agent exits, the lease goes on)."""
        self._stop.set()
        self.prober.stop()
        with self._lock:
            self._close_forwarders()

    def _poll_loop(self) -> None:
        endpoint_sent = False
        while not self._stop.is_set():
            try:
                if not endpoint_sent:
                    endpoint = f"{self.host}:{self.interface.port}"
                    self.link.call("PUT", f"{self.base}/endpoint", {"endpoint": endpoint})
                    endpoint_sent = True
                path = f"{self.base}?version={self.version}&wait={POLL_SECONDS:g}"
                data = self.link.call("GET", path, timeout=POLL_SECONDS + 15)
                answer = MeshMapOut.model_validate(data)
                if answer.version != self.version:
                    self._apply(answer.version, answer.peer_map())
            except LinkError as exc:
                if exc.status == 404:  # no member of this lease now: drop every peer at once
                    self._isolate()  # (the daemon removes the interface with the lease)
                else:
                    log.warning("event=mesh_poll_failed lease=%s reason=%s", self.lease_id, exc)
                self._stop.wait(RETRY_SECONDS)
            except (WireGuardError, WireGuardUnavailable, OSError) as exc:
                log.error("event=mesh_apply_failed lease=%s reason=%s", self.lease_id, exc)
                self._stop.wait(RETRY_SECONDS)

    def _apply(self, version: str, peer_map: PeerMap) -> None:
        with self._lock:
            if self._removed:
                return
            self.interface.apply(peer_map)
            self.peer_map, self.version = peer_map, version
        self.prober.set_map(peer_map)
        log.info(
            "event=mesh_applied lease=%s version=%s peers=%d forwards=%s",
            self.lease_id,
            version[:8],
            len(peer_map.peers),
            peer_map.forwards,
        )

    def _isolate(self) -> None:
        with self._lock:
            if self._removed or self.peer_map is None or not self.peer_map.peers:
                return
            empty = replace(self.peer_map, peers=(), forwards=False)
            self.interface.apply(empty)
            self.peer_map, self.version = empty, ""
        self.prober.set_map(empty)
        log.info("event=mesh_isolated lease=%s", self.lease_id)

    def _report_loop(self) -> None:
        sent_at = 0.0
        while not self._stop.wait(REPORT_CHECK_SECONDS):
            report = self.prober.latest()
            if report is None or report.at == sent_at or not report.rtt_ms:
                continue
            try:
                self.link.call("POST", f"{self.base}/probes", {"rtt_ms": dict(report.rtt_ms)})
                sent_at = report.at
            except LinkError as exc:
                if exc.status not in (404, 422):  # over, or the map changed under the round
                    log.warning("event=mesh_report_failed lease=%s reason=%s", self.lease_id, exc)


def lease_interface_name(worker_id: str, lease_id: str) -> str:
    # The worker id is part of the name: wireguard-go's sockets are machine-wide, and two
    # agents on one machine (tests, or two suppliers) may run one lease each.
    return interface_name(f"{worker_id}/{lease_id}")


class MeshManager:
    """The interfaces of the agent's open leases. `start` once the worker is registered;
    `sync` with the leases running after every reconciliation."""

    def __init__(
        self,
        link: CoordinatorLink,
        worker_id: str,
        state_dir: Path,
        coordinator_url: str,
        advertise: str | None = None,
        netns: str | None = None,
        sealed: bool = True,
    ) -> None:
        self.link = link
        self.worker_id = worker_id
        self.state_dir = state_dir
        self.coordinator_url = coordinator_url
        self.advertise = advertise
        self.netns = netns
        self.sealed = sealed  # each lease's interface in the lease's own namespace
        self.address: str | None = None  # this worker's overlay IPv4, once registered
        self.unavailable: str | None = None  # why the mesh is off, once known
        self._key: KeyPair | None = None
        self._backend: Backend | None = None
        self._host = ""
        self._leases: dict[str, LeaseMesh] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._key is not None and self.address is not None

    def _check(self) -> Backend:
        if os.geteuid() != 0:
            raise WireGuardUnavailable("WireGuard interfaces need root")
        return detect_backend(self.netns)

    def interface_name(self, lease_id: str) -> str:
        return lease_interface_name(self.worker_id, lease_id)

    @property
    def _record(self) -> Path:
        return self.state_dir / INTERFACES_FILE

    def _recorded(self) -> set[str]:
        if not self._record.exists():
            return set()
        return set(json.loads(self._record.read_text()))

    def _save_record(self, names: set[str]) -> None:
        write_json(self._record, sorted(names))

    def adopt(self, open_leases: set[str]) -> None:
        """After a restart: remove this agent's interfaces of leases that are no longer open
        (links in its namespace, and those it recorded making); the open ones are adopted
        when `sync` starts them. Interfaces of other agents on the machine are left alone."""
        try:
            self._check()
            keep = {self.interface_name(lease) for lease in open_leases}
            recorded = self._recorded()
            mine = set(leftover_interfaces(self.netns, sockets=False)) | recorded
            for name in sorted(mine - keep):
                log.warning("event=mesh_leftover_removed interface=%s", name)
                self._remove_leftover(name)
            self._save_record(recorded & keep)
        except (WireGuardUnavailable, WireGuardError, OSError) as exc:
            log.debug("event=mesh_adopt_skipped reason=%s", exc)

    def start(self) -> bool:
        """Load (or make) the key and register it; False, said once, when the mesh cannot
        run on this machine."""
        if self.enabled:
            return True
        if self.unavailable is not None:
            return False
        try:
            self._backend = self._check()
            key = load_or_create_key(self.state_dir)
        except (WireGuardUnavailable, WireGuardError) as exc:
            self.unavailable = str(exc)
            log.warning("event=mesh_unavailable reason=%s note=leases run without the mesh", exc)
            return False
        try:
            answer = self.link.call("POST", "/v1/agent/mesh/key", {"public_key": key.public_key})
        except LinkError as exc:
            log.warning("event=mesh_key_failed reason=%s", exc)
            return False  # try again on the next sync
        self._host = self.advertise or local_address_towards(self.coordinator_url)
        self._key, self.address = key, str(answer["address"])
        log.info(
            "event=mesh_ready address=%s endpoint_host=%s backend=%s",
            self.address,
            self._host,
            self._backend,
        )
        return True

    def sync(self, running: set[str], egress: frozenset[str] = frozenset()) -> None:
        """Bring up the mesh of every running lease (with Internet egress for those in
        `egress`) and remove that of every other."""
        if not self.start():
            return
        assert self._key is not None and self._backend is not None
        with self._lock:
            recorded = self._recorded()
            for lease_id in [x for x in self._leases if x not in running]:
                lease = self._leases.pop(lease_id)
                lease.remove()
                recorded.discard(lease.interface.name)
                log.info("event=mesh_removed lease=%s", lease_id)
            # interfaces of leases that ended before this run started their loops
            for name in sorted(recorded - {self.interface_name(x) for x in running}):
                self._remove_leftover(name)
                recorded.discard(name)
                log.info("event=mesh_leftover_removed interface=%s", name)
            for lease_id in sorted(running - self._leases.keys()):
                lease = LeaseMesh(
                    lease_id,
                    self.link,
                    self.interface_name(lease_id),
                    self._key,
                    self._backend,
                    self._host,
                    self.netns,
                    self.sealed,
                    self.state_dir if lease_id in egress else None,
                )
                recorded.add(lease.interface.name)
                self._save_record(recorded)  # before it exists: a crash leaves no orphan
                try:
                    lease.start()
                except (WireGuardError, WireGuardUnavailable, OSError) as exc:
                    log.error("event=mesh_up_failed lease=%s reason=%s", lease_id, exc)
                    continue
                self._leases[lease_id] = lease
                log.info("event=mesh_up lease=%s interface=%s", lease_id, lease.interface.name)
            self._save_record(recorded)

    def _remove_leftover(self, name: str) -> None:
        """An interface of a lease no longer open: where it lives (the lease's namespace,
        or still the agent's after a crash before the move), then the namespace."""
        leasenet = LeaseNetns(netns_of_interface(name))
        LeaseEgress(leasenet, self.netns, self.state_dir).down()  # a crashed run's slirp4netns
        if leasenet.exists():
            remove_interface(name, leasenet.name)
        remove_interface(name, self.netns)
        leasenet.destroy()

    def netns_path(self, lease_id: str) -> str | None:
        """The path of the lease's own network namespace (`nsenter --net=PATH`), where its
        interface and overlay address are; None without the mesh, or unsealed."""
        with self._lock:
            lease = self._leases.get(lease_id)
        if lease is None or lease.leasenet is None:
            return None
        return lease.leasenet.path

    def forward(self, lease_id: str, host: str, port: int, listen_host: str) -> str:
        """`host:port` in the agent's namespace forwarded to `host:port` inside the lease's
        namespace (LeaseMesh.forward); WireGuardError when the lease has no mesh here."""
        with self._lock:
            lease = self._leases.get(lease_id)
        if lease is None:
            raise WireGuardError(f"no mesh for lease {lease_id} on this worker")
        return lease.forward(host, port, listen_host)

    def egress_problem(self, lease_id: str) -> str | None:
        """Why a lease that booked egress has none here (the daemon fails it), or None."""
        with self._lock:
            lease = self._leases.get(lease_id)
        return lease.egress_problem if lease is not None else None

    def overlay_address(self, lease_id: str) -> str | None:
        """The overlay IPv4 address this worker has in the lease's mesh, once its interface
        carries the lease's map; None without the mesh (bind to ordinary addresses then)."""
        with self._lock:
            lease = self._leases.get(lease_id)
        if lease is None or lease.peer_map is None:
            return None
        return lease.peer_map.address

    def close(self) -> None:
        """Stop every loop; interfaces stay for the next run to adopt (leases go on)."""
        with self._lock:
            for lease in self._leases.values():
                lease.stop()
            self._leases.clear()
