"""Mesh rules: overlay addresses, each member's peer map, and when to relay.

Pure values in, values out; the coordinator persists what these functions return and the
agent's WireGuard driver applies the maps (docs/mesh.md draws the whole picture).

- **Addresses.** Every worker (and every renter client) gets one IPv4 address in
  100.64.0.0/10, never handed to anyone else afterwards. Each also has a *direct* IPv6
  address derived from it (`direct_address`), which is always routed to its owner's own
  WireGuard peer and never through a relay, so the direct path stays measurable while
  traffic takes a relay.
- **Peer maps.** A member's map holds the other members of its cluster (and the renter's
  client) and nobody else. Each member's IPv4 /32 sits in exactly one peer's allowed IPs:
  its own, or the relay's when the pair talks through a relay.
- **Relays.** `decide_path` is a per-pair state machine with hysteresis; `step_relays`
  runs it over a cluster and returns decisions that `peer_maps` accepts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import combinations

from gpupool.domain.errors import Conflict
from gpupool.domain.models import BookingRequest, Device, Shortfall
from gpupool.domain.placement import Placed, Placement

OVERLAY_NETWORK = ipaddress.IPv4Network("100.64.0.0/10")
# A fixed ULA /96; the overlay IPv4 address fills its last 32 bits.
DIRECT_PREFIX = ipaddress.IPv6Network("fd67:9a3c:51e0::/96")


# -- addresses ------------------------------------------------------------------------------


def _usable(address: ipaddress.IPv4Address) -> bool:
    # .0 and .255 are valid on /32 point-to-point links, but enough software treats them as
    # network or broadcast addresses that skipping them (0.8% of the space) is cheaper.
    return address.packed[3] not in (0, 255)


def next_overlay_address(
    allocated: Iterable[str], network: ipaddress.IPv4Network = OVERLAY_NETWORK
) -> str:
    """The next overlay address to hand out, given every address ever allocated.

    Addresses are never reused: the caller passes all addresses it ever gave out (also those
    of workers that are gone) and persists the answer. The answer follows the highest one
    allocated; only when the top of 100.64.0.0/10 is reached are never-used gaps filled.
    """
    taken = {ipaddress.IPv4Address(a) for a in allocated}
    first, last = network.network_address + 1, network.broadcast_address - 1
    start = max(taken, default=first - 1) + 1
    for low, high in ((start, last), (first, start - 1)):
        candidate = max(low, first)
        while candidate <= high:
            if candidate not in taken and _usable(candidate):
                return str(candidate)
            candidate += 1
    raise Conflict(f"the overlay network {network} has no address left")


def direct_address(address: str) -> str:
    """The member's IPv6 address that is always reached over the direct WireGuard path."""
    v4 = ipaddress.IPv4Address(address)
    if v4 not in OVERLAY_NETWORK:
        raise ValueError(f"{address} is not in {OVERLAY_NETWORK}")
    return str(DIRECT_PREFIX.network_address + int(v4))


# -- peer maps ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """A cluster member (or the renter's client) as the control plane knows it."""

    worker_id: str
    address: str  # overlay IPv4, from next_overlay_address
    public_key: str  # WireGuard public key, base64
    endpoint: str | None  # underlay "host:port"; None for a client that only dials out


@dataclass(frozen=True)
class Peer:
    worker_id: str
    address: str  # the peer's own overlay IPv4 (its direct address derives from it)
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]  # sorted CIDRs: /32s and the peer's direct /128


@dataclass(frozen=True)
class PeerMap:
    """What one node applies: its own addresses and its peers."""

    worker_id: str
    address: str
    direct_address: str
    peers: tuple[Peer, ...]
    forwards: bool  # some pair's traffic goes through this node: it must route wg -> wg

    def routed_addresses(self) -> list[str]:
        """Every CIDR the map routes into the WireGuard interface."""
        return sorted(ip for peer in self.peers for ip in peer.allowed_ips)


Pair = tuple[str, str]  # two worker ids, sorted


def pair(a: str, b: str) -> Pair:
    return (a, b) if a <= b else (b, a)


def _normalise_relays(relays: Mapping[tuple[str, str], str], members: set[str]) -> dict[Pair, str]:
    """Relay decisions hold for both directions: WireGuard drops a packet whose source is not
    in the allowed IPs of the peer it came from, so b must expect a's packets from r too."""
    out: dict[Pair, str] = {}
    for (a, b), relay in relays.items():
        for who in (a, b, relay):
            if who not in members:
                raise ValueError(f"relay decision names {who!r}, which is not a member")
        if len({a, b, relay}) != 3:
            raise ValueError(f"relay decision {a!r}-{b!r} via {relay!r} needs three members")
        key = pair(a, b)
        if out.setdefault(key, relay) != relay:
            raise ValueError(f"pair {a!r}-{b!r} names two relays")
    for (a, b), relay in out.items():
        for leg in (pair(a, relay), pair(relay, b)):
            if leg in out:
                raise ValueError(f"relay {relay!r} for {a!r}-{b!r} is itself relayed on {leg}")
    return out


def _check_unique(nodes: Sequence[Member]) -> None:
    for field in ("worker_id", "address", "public_key"):
        values = [getattr(n, field) for n in nodes]
        if len(set(values)) != len(values):
            raise ValueError(f"two mesh members share a {field}")
    for n in nodes:
        direct_address(n.address)  # validates the range


def peer_maps(
    members: Sequence[Member],
    relays: Mapping[tuple[str, str], str] | None = None,
    client: Member | None = None,
) -> dict[str, PeerMap]:
    """Each member's peer map (and the client's, under its id).

    `relays` maps a pair of member ids to the member that relays between them (either order;
    it holds both ways). A relay's own legs to the pair must be direct. The client reaches
    every member directly and never relays.
    """
    nodes = [*members, *([client] if client else [])]
    _check_unique(nodes)
    by_id = {m.worker_id: m for m in members}
    decided = _normalise_relays(relays or {}, set(by_id))
    relayers = set(decided.values())

    def allowed(owner: str, peer: Member) -> tuple[str, ...]:
        ips = [f"{direct_address(peer.address)}/128"]
        if pair(owner, peer.worker_id) not in decided:
            ips.append(f"{peer.address}/32")
        for (a, b), relay in decided.items():
            if relay == peer.worker_id and owner in (a, b):
                other = b if owner == a else a
                ips.append(f"{by_id[other].address}/32")
        return tuple(sorted(ips))

    def map_for(node: Member, others: Iterable[Member]) -> PeerMap:
        peers = tuple(
            Peer(p.worker_id, p.address, p.public_key, p.endpoint, allowed(node.worker_id, p))
            for p in sorted(others, key=lambda m: m.worker_id)
        )
        return PeerMap(
            node.worker_id,
            node.address,
            direct_address(node.address),
            peers,
            forwards=node.worker_id in relayers,
        )

    client_peers = [client] if client else []
    maps = {
        m.worker_id: map_for(m, [*(o for o in members if o is not m), *client_peers])
        for m in members
    }
    if client is not None:
        maps[client.worker_id] = map_for(client, members)
    return maps


# -- relays ---------------------------------------------------------------------------------

FAILS_TO_RELAY = 2  # consecutive failed direct probes before a pair takes a relay
RELAY_FACTOR = 0.5  # a relay path faster than half the direct RTT is taken at once...
RELAY_MIN_GAIN_MS = 10.0  # ...when that saves at least this much: sub-ms RTTs are noise
GOOD_TO_DIRECT = 5  # consecutive good direct probes before a relayed pair goes back

# (prober, target) -> RTT in ms of the prober's latest direct probe of target; None = lost
Probes = Mapping[tuple[str, str], float | None]


@dataclass(frozen=True)
class PathState:
    """Where a pair's traffic goes now, and the counters its hysteresis needs."""

    relay: str | None = None  # None: direct
    direct_failures: int = 0  # consecutive failed direct probes
    direct_good: int = 0  # consecutive good direct probes (answered, no much faster relay)


@dataclass(frozen=True)
class PathObservation:
    direct_rtt_ms: float | None  # None: the direct probe got no answer
    relay_rtt_ms: Mapping[str, float]  # relay id -> RTT through it; only relays that answer


def decide_path(state: PathState, seen: PathObservation) -> PathState:
    """One probe round for one pair.

    Direct -> relay after FAILS_TO_RELAY failed direct probes in a row, or at once when the
    best relay is under RELAY_FACTOR of the direct RTT and RELAY_MIN_GAIN_MS faster (on a
    LAN, RTTs under a millisecond halve and double by scheduling noise alone). Relay ->
    direct after GOOD_TO_DIRECT good direct probes in a row, so a flapping path does not
    flap the routes. A relay that
    stops answering is left at once, for the best other relay or else for direct.
    """
    ok = seen.direct_rtt_ms is not None
    best = min(seen.relay_rtt_ms.items(), key=lambda kv: (kv[1], kv[0]), default=None)
    direct = seen.direct_rtt_ms or 0.0
    faster = (
        ok
        and best is not None
        and best[1] < direct * RELAY_FACTOR
        and direct - best[1] >= RELAY_MIN_GAIN_MS
    )
    good = ok and not faster
    now = replace(
        state,
        direct_failures=0 if ok else state.direct_failures + 1,
        direct_good=state.direct_good + 1 if good else 0,
    )
    if state.relay is None:
        if best is not None and (faster or now.direct_failures >= FAILS_TO_RELAY):
            return replace(now, relay=best[0])
        return now
    if now.direct_good >= GOOD_TO_DIRECT:
        return replace(now, relay=None)
    if state.relay in seen.relay_rtt_ms:
        return now
    return replace(now, relay=best[0] if best is not None and not good else None)


def direct_rtt_ms(probes: Probes, a: str, b: str) -> float | None:
    """The pair's direct RTT: the worse of the two directions measured; None when either
    direction lost its probe or neither measured yet."""
    seen = [probes[key] for key in ((a, b), (b, a)) if key in probes]
    if not seen or any(v is None for v in seen):
        return None
    return max(v for v in seen if v is not None)


def observe(probes: Probes, members: Iterable[str], a: str, b: str) -> PathObservation:
    """A pair's observation from the cluster's direct probes; a relay path's RTT is the sum
    of its two direct legs."""
    relays: dict[str, float] = {}
    for r in members:
        if r in (a, b):
            continue
        first, second = direct_rtt_ms(probes, a, r), direct_rtt_ms(probes, r, b)
        if first is not None and second is not None:
            relays[r] = first + second
    return PathObservation(direct_rtt_ms(probes, a, b), relays)


def step_relays(
    members: Sequence[str], states: Mapping[Pair, PathState], probes: Probes
) -> dict[Pair, PathState]:
    """One probe round for every pair of a cluster; `relay_decisions` of the result is always
    accepted by `peer_maps` (a relay's legs are direct)."""
    ids = set(members)
    previous = {p: states.get(p, PathState()) for p in combinations(sorted(ids), 2)}
    for p, state in previous.items():
        if state.relay is not None and state.relay not in ids:  # the relay left the cluster
            previous[p] = replace(state, relay=None)
    new: dict[Pair, PathState] = {}
    for (a, b), old in previous.items():
        seen = observe(probes, members, a, b)
        usable = {
            r: rtt
            for r, rtt in seen.relay_rtt_ms.items()
            if previous[pair(a, r)].relay is None and previous[pair(r, b)].relay is None
        }
        new[(a, b)] = decide_path(old, replace(seen, relay_rtt_ms=usable))
    # A pair may have started relaying on a leg that another pair's relay needs: undo
    # changes made this round first (the changed leg, then the pair), else go direct.
    while (conflict := _relayed_leg(new)) is not None:
        relayed, leg = conflict
        if new[leg].relay != previous[leg].relay:
            new[leg] = replace(new[leg], relay=previous[leg].relay)
        elif new[relayed].relay != previous[relayed].relay:
            new[relayed] = replace(new[relayed], relay=previous[relayed].relay)
        else:
            new[relayed] = replace(new[relayed], relay=None)
    return new


def _relayed_leg(states: Mapping[Pair, PathState]) -> tuple[Pair, Pair] | None:
    for (a, b), state in sorted(states.items()):
        if state.relay is None:
            continue
        for leg in (pair(a, state.relay), pair(state.relay, b)):
            if states[leg].relay is not None:
                return (a, b), leg
    return None


def relay_decisions(states: Mapping[Pair, PathState]) -> dict[Pair, str]:
    """The `relays` argument of `peer_maps`."""
    return {p: s.relay for p, s in states.items() if s.relay is not None}


# -- placement ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApartFromOpenLeases:
    """A placement that never puts two workers together into a second open lease.

    A worker has one overlay address and one interface per lease in its namespace. If
    workers a and x shared two open leases, a's two interfaces would both route x's /32
    and one of them would lose. So a multi-worker placement whose workers include a pair
    that already shares an open lease is placed again without the worker of that pair that
    holds fewer of the chosen devices; each retry drops a worker, so it ends. A lease on a
    single worker has no peers and never conflicts.
    """

    inner: Placement
    open_leases: Sequence[frozenset[str]]  # the worker ids of each open lease

    def place(self, request: BookingRequest, candidates: Sequence[Device]) -> Placed | Shortfall:
        shared = {p for group in self.open_leases for p in combinations(sorted(group), 2)}
        pool = list(candidates)
        while True:
            placed = self.inner.place(request, pool)
            if isinstance(placed, Shortfall):
                return placed
            workers = sorted({d.worker_id for d in placed.devices})
            clash = next((p for p in combinations(workers, 2) if p in shared), None)
            if clash is None:
                return placed
            chosen = [d.worker_id for d in placed.devices]
            drop = min(clash, key=lambda w: (chosen.count(w), w))
            pool = [d for d in pool if d.worker_id != drop]
