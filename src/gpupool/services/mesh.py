"""The mesh's control plane (docs/mesh.md): overlay addresses and WireGuard keys, each
member's peer map, and the relay rule run over the members' probes.

- **Addresses.** A worker gets its overlay address the first time it registers a key
  (`register_key`); a renter's client gets one per cluster (`connect_client`). Both keep
  their address when the key changes (rotation), and no address is ever handed out twice.
- **Members.** A lease's mesh members are the workers holding one of its devices, while the
  lease is active and that member is neither released nor failed, and once the worker has
  registered a key. Each gets `domain.mesh.peer_maps` of exactly those (plus the cluster's
  client, when one is connected), so nobody outside the cluster is in any map.
- **Versions.** A map's version is a hash of its content, so every change (a member joins
  or leaves, a key, an endpoint or a relay decision changes) is a new version without
  bookkeeping in the services that cause it; agents long-poll for a version other than
  theirs.
- **Relays.** Agents report their direct probes; at most once per ROUND_SECONDS per lease
  the reports newer than PROBE_MAX_AGE run `step_relays`, whose decisions go into the maps.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
from dataclasses import asdict, dataclass

from gpupool.crypto.wgkeys import is_public_key
from gpupool.domain.errors import Conflict, InvalidRequest, NotFound
from gpupool.domain.leases import ACTIVE_STATES, MemberState
from gpupool.domain.mesh import (
    Member,
    PeerMap,
    next_overlay_address,
    peer_maps,
    relay_decisions,
    step_relays,
)
from gpupool.domain.models import Account
from gpupool.services.market import own_cluster
from gpupool.services.ports import Clock, Database, MeshNode, Transaction

ROUND_SECONDS = 0.9  # the relay rule runs at most this often per lease (probes come at 1 s)
PROBE_MAX_AGE = 3.0  # seconds: older probe reports count as not measured
ALLOCATION_ATTEMPTS = 5  # concurrent allocations may pick the same address; the loser retries
MAX_RTT_MS = 60_000.0
_LEFT = frozenset({MemberState.RELEASED, MemberState.FAILED})


def client_id(cluster_id: str) -> str:
    return f"client:{cluster_id}"


@dataclass(frozen=True, slots=True)
class VersionedMap:
    version: str
    peer_map: PeerMap


def map_version(peer_map: PeerMap) -> str:
    body = json.dumps(asdict(peer_map), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def check_endpoint(endpoint: str) -> str:
    """A member's underlay endpoint: "IPv4:port" or "[IPv6]:port"."""
    host, sep, port = endpoint.rpartition(":")
    try:
        ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
        ok = sep == ":" and port.isdigit() and 1 <= int(port) <= 65535
    except ValueError:
        ok = False
    if not ok:
        raise InvalidRequest(f"endpoint {endpoint!r} is not an address:port")
    return endpoint


def _check_key(public_key: str) -> None:
    if not is_public_key(public_key):
        raise InvalidRequest("public_key is not a base64 WireGuard (X25519) public key")


class Mesh:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    # keys and addresses ----------------------------------------------------------------

    def register_key(self, worker_id: str, public_key: str) -> str:
        """Store the worker's WireGuard public key; its overlay address (allocated on the
        first call, the same after a rotation)."""
        return self._claim(worker_id, "worker", public_key, None)

    def connect_client(self, renter: Account, cluster_id: str, public_key: str) -> PeerMap:
        """Give the renter's machine a peer entry in the cluster's mesh; its peer map (its
        address and the members to reach). A second call replaces the key, keeping the
        address."""
        _check_key(public_key)
        with self._db.transaction() as tx:
            cluster = own_cluster(tx, renter, cluster_id)
            lease = tx.leases.lease_of_cluster(cluster.id)
            if lease.state not in ACTIVE_STATES:
                raise Conflict(f"cluster {cluster_id} is {lease.state}; nothing to connect to")
            if not self._keyed_members(tx, lease.id):
                # a config with no peers would come up and reach nothing
                raise Conflict(
                    f"cluster {cluster_id} has no mesh: none of its members runs WireGuard "
                    "(their agents have no mesh key); reach its Ray through the coordinator "
                    "with gpupool job submit"
                )
        node_id = client_id(cluster_id)
        self._claim(node_id, "client", public_key, cluster_id)
        with self._db.transaction() as tx:
            maps = self._maps(tx, lease.id, cluster_id)
        return maps[node_id]

    def _claim(self, node_id: str, kind: str, public_key: str, cluster_id: str | None) -> str:
        _check_key(public_key)
        for _ in range(ALLOCATION_ATTEMPTS):
            now = self._clock.now()
            with self._db.transaction() as tx:
                holder = tx.mesh.node_with_key(public_key)
                if holder is not None and holder.id != node_id:
                    raise Conflict("this WireGuard public key belongs to another mesh node")
                known = tx.mesh.node(node_id)
                if known is not None:
                    if known.public_key != public_key:
                        tx.mesh.set_key(node_id, public_key, now)
                    return known.address
                address = next_overlay_address(tx.mesh.addresses())
                node = MeshNode(node_id, kind, address, public_key, cluster_id)
                if tx.mesh.add_node(node, now):
                    return address
        raise Conflict("could not allocate an overlay address; try again")

    # members' maps ---------------------------------------------------------------------

    def set_endpoint(self, worker_id: str, lease_id: str, endpoint: str) -> None:
        check_endpoint(endpoint)
        with self._db.transaction() as tx:
            self._cluster_of_member(tx, lease_id, worker_id)
            tx.mesh.set_endpoint(lease_id, worker_id, endpoint, self._clock.now())

    def peer_map(self, worker_id: str, lease_id: str) -> VersionedMap:
        """The worker's peer map in the lease; NotFound when it is not a member of the
        lease now (or has no key yet)."""
        with self._db.transaction() as tx:
            cluster_id = self._cluster_of_member(tx, lease_id, worker_id)
            found = self._maps(tx, lease_id, cluster_id).get(worker_id)
        if found is None:
            raise NotFound("register a WireGuard key before asking for a peer map")
        return VersionedMap(map_version(found), found)

    def version(self, worker_id: str, lease_id: str) -> str | None:
        """The current map version, None when the worker is no member of the lease now."""
        try:
            return self.peer_map(worker_id, lease_id).version
        except NotFound:
            return None

    def report_probes(self, worker_id: str, lease_id: str, rtts: dict[str, float | None]) -> bool:
        """Store the worker's latest direct probes; run the relay rule when a round is due.
        True when the rule ran."""
        for target, rtt in rtts.items():
            if rtt is not None and not (math.isfinite(rtt) and 0 <= rtt <= MAX_RTT_MS):
                raise InvalidRequest(f"rtt to {target} must be between 0 and {MAX_RTT_MS} ms")
        now = self._clock.now()
        with self._db.transaction() as tx:
            self._cluster_of_member(tx, lease_id, worker_id)
            members = self._keyed_members(tx, lease_id)
            unknown = set(rtts) - set(members) - {worker_id}
            if unknown or worker_id in rtts:
                raise InvalidRequest(f"not peers of this member: {', '.join(sorted(unknown))}")
            tx.mesh.set_probes(lease_id, worker_id, rtts, now)
            if now - tx.mesh.lock_round(lease_id) < ROUND_SECONDS:
                return False
            ids = sorted(members)
            probes = tx.mesh.probes(lease_id, now - PROBE_MAX_AGE)
            probes = {k: v for k, v in probes.items() if k[0] in members and k[1] in members}
            states = step_relays(ids, tx.mesh.paths(lease_id), probes)
            tx.mesh.save_paths(lease_id, states)
            tx.mesh.set_round(lease_id, now)
            return True

    # internals -------------------------------------------------------------------------

    def _cluster_of_member(self, tx: Transaction, lease_id: str, worker_id: str) -> str:
        """The lease's cluster id, when `worker_id` is one of its members now."""
        lease = tx.leases.lease(lease_id)
        if lease is None or lease.state not in ACTIVE_STATES:
            raise NotFound(f"no active lease {lease_id} on this worker")
        if worker_id not in _current_workers(tx, lease_id):
            raise NotFound(f"no active lease {lease_id} on this worker")
        return lease.cluster_id

    def _keyed_members(self, tx: Transaction, lease_id: str) -> dict[str, MeshNode]:
        return {n.id: n for n in tx.mesh.nodes(_current_workers(tx, lease_id))}

    def _maps(self, tx: Transaction, lease_id: str, cluster_id: str) -> dict[str, PeerMap]:
        nodes = self._keyed_members(tx, lease_id)
        endpoints = tx.mesh.endpoints(lease_id)
        members = [
            Member(n.id, n.address, n.public_key, endpoints.get(n.id)) for n in nodes.values()
        ]
        client_node = tx.mesh.node(client_id(cluster_id))
        client = (
            Member(client_node.id, client_node.address, client_node.public_key, None)
            if client_node is not None
            else None
        )
        # Decisions about members that left meanwhile are dropped; what remains of a valid
        # set of decisions is still valid (no relay leg becomes relayed by removing some).
        decisions = {
            p: relay
            for p, relay in relay_decisions(tx.mesh.paths(lease_id)).items()
            if {*p, relay} <= nodes.keys()
        }
        return peer_maps(members, decisions, client)


def _current_workers(tx: Transaction, lease_id: str) -> set[str]:
    return {m.worker_id for m in tx.leases.members(lease_id) if m.state not in _LEFT}
