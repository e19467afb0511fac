"""Mesh rules: overlay addresses, peer maps and the relay rule, with property tests."""

from __future__ import annotations

import ipaddress
from itertools import combinations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpupool.domain.errors import Conflict
from gpupool.domain.mesh import (
    FAILS_TO_RELAY,
    GOOD_TO_DIRECT,
    Member,
    PathObservation,
    PathState,
    PeerMap,
    decide_path,
    direct_address,
    next_overlay_address,
    observe,
    pair,
    peer_maps,
    relay_decisions,
    step_relays,
)


def member(i: int) -> Member:
    return Member(f"w-{i}", f"100.64.0.{i + 1}", f"key{i}=", f"10.0.0.{i + 1}:51820")


def routed(peer_map: PeerMap) -> dict[str, str]:
    """Each routed CIDR -> the peer it is routed to; fails on a CIDR routed twice."""
    out: dict[str, str] = {}
    for peer in peer_map.peers:
        for ip in peer.allowed_ips:
            assert ip not in out, f"{ip} routed twice in {peer_map.worker_id}'s map"
            out[ip] = peer.worker_id
    return out


# -- addresses ------------------------------------------------------------------------------


def test_first_address_follows_the_network_address() -> None:
    assert next_overlay_address([]) == "100.64.0.1"


def test_next_address_follows_the_highest_so_released_ones_are_not_reused() -> None:
    # 100.64.0.2 belonged to a worker that left: it stays in the list and is not handed out
    assert next_overlay_address(["100.64.0.1", "100.64.0.2", "100.64.0.3"]) == "100.64.0.4"
    assert next_overlay_address(["100.64.0.7"]) == "100.64.0.8"


def test_addresses_ending_in_0_or_255_are_skipped() -> None:
    assert next_overlay_address(["100.64.0.254"]) == "100.64.1.1"
    assert next_overlay_address(["100.64.3.253"]) == "100.64.3.254"


def test_gaps_are_filled_only_once_the_top_is_reached() -> None:
    assert next_overlay_address(["100.127.255.254"]) == "100.64.0.1"
    assert next_overlay_address(["100.64.0.1", "100.127.255.254"]) == "100.64.0.2"


def test_a_full_network_is_a_conflict() -> None:
    net = ipaddress.IPv4Network("100.64.0.0/24")
    taken = [str(a) for a in net.hosts() if a.packed[3] not in (0, 255)]
    assert next_overlay_address(taken[:-1], net) == taken[-1]
    assert next_overlay_address(taken[1:], net) == taken[0]
    with pytest.raises(Conflict):
        next_overlay_address(taken, net)


@given(st.lists(st.integers(min_value=1, max_value=5000), max_size=40))
def test_next_address_is_fresh_usable_and_in_range(offsets: list[int]) -> None:
    base = ipaddress.IPv4Address("100.64.0.0")
    allocated = [str(base + o) for o in offsets]
    new = next_overlay_address(allocated)
    address = ipaddress.IPv4Address(new)
    assert new not in allocated
    assert address in ipaddress.IPv4Network("100.64.0.0/10")
    assert address.packed[3] not in (0, 255)


def test_direct_address_embeds_the_overlay_address() -> None:
    assert direct_address("100.64.0.2") == "fd67:9a3c:51e0::6440:2"
    with pytest.raises(ValueError):
        direct_address("10.0.0.1")


# -- peer maps ------------------------------------------------------------------------------


def test_each_member_gets_the_others_directly() -> None:
    maps = peer_maps([member(0), member(1), member(2)])
    m0 = maps["w-0"]
    assert [p.worker_id for p in m0.peers] == ["w-1", "w-2"]
    assert m0.peers[0].allowed_ips == ("100.64.0.2/32", "fd67:9a3c:51e0::6440:2/128")
    assert m0.peers[0].endpoint == "10.0.0.2:51820"
    assert m0.address == "100.64.0.1"
    assert not any(m.forwards for m in maps.values())


def test_a_relayed_pair_routes_through_the_relay_both_ways() -> None:
    maps = peer_maps([member(0), member(1), member(2)], {("w-1", "w-0"): "w-2"})
    assert routed(maps["w-0"])["100.64.0.2/32"] == "w-2"
    assert routed(maps["w-1"])["100.64.0.1/32"] == "w-2"
    # the direct path stays measurable on the direct /128
    assert routed(maps["w-0"])["fd67:9a3c:51e0::6440:2/128"] == "w-1"
    # the relay reaches both ends directly and forwards
    assert routed(maps["w-2"])["100.64.0.1/32"] == "w-0"
    assert routed(maps["w-2"])["100.64.0.2/32"] == "w-1"
    assert maps["w-2"].forwards
    assert not maps["w-0"].forwards


def test_the_client_reaches_every_member_and_every_member_the_client() -> None:
    client = Member("c-renter", "100.64.9.1", "ckey=", None)
    maps = peer_maps([member(0), member(1)], client=client)
    assert [p.worker_id for p in maps["c-renter"].peers] == ["w-0", "w-1"]
    assert routed(maps["w-0"])["100.64.9.1/32"] == "c-renter"
    assert next(p for p in maps["w-1"].peers if p.worker_id == "c-renter").endpoint is None


@pytest.mark.parametrize(
    "relays",
    [
        {("w-0", "w-1"): "w-9"},  # not a member
        {("w-0", "w-1"): "w-1"},  # relay is one end
        {("w-0", "w-1"): "w-2", ("w-1", "w-0"): "w-3"},  # two relays for one pair
        {("w-0", "w-1"): "w-2", ("w-0", "w-2"): "w-3"},  # the relay's leg is relayed
    ],
)
def test_inconsistent_relay_decisions_are_refused(relays: dict[tuple[str, str], str]) -> None:
    with pytest.raises(ValueError):
        peer_maps([member(i) for i in range(4)], relays)


def test_members_sharing_an_address_or_key_are_refused() -> None:
    twin = Member("w-9", member(0).address, "other=", None)
    with pytest.raises(ValueError):
        peer_maps([member(0), twin])


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[Member], dict[tuple[str, str], str]]:
    n = draw(st.integers(min_value=1, max_value=7))
    members = [member(i) for i in range(n)]
    relays: dict[tuple[str, str], str] = {}
    for a, b in draw(st.permutations(list(combinations(range(n), 2)))):
        r = draw(st.integers(min_value=0, max_value=n))
        if r in (a, b) or r == n or not draw(st.booleans()):
            continue
        x, y, z = f"w-{a}", f"w-{b}", f"w-{r}"
        legs_free = pair(x, z) not in relays and pair(z, y) not in relays
        used_as_leg = any(pair(x, y) in (pair(p, q), pair(q, v)) for (p, q), v in relays.items())
        uses_leg = any(pair(x, y) in ((pair(p, v)), pair(v, q)) for (p, q), v in relays.items())
        if legs_free and not used_as_leg and not uses_leg:
            relays[pair(x, y)] = z
    return members, relays


@given(clusters())
def test_every_map_routes_each_other_member_exactly_once_and_nothing_else(
    cluster: tuple[list[Member], dict[tuple[str, str], str]],
) -> None:
    members, relays = cluster
    ids = {m.worker_id for m in members}
    maps = peer_maps(members, relays)
    assert set(maps) == ids
    for owner, peer_map in maps.items():
        peers = {p.worker_id for p in peer_map.peers}
        assert owner not in peers
        assert peers == ids - {owner}
        table = routed(peer_map)  # also asserts nothing is routed twice
        v4 = {ip for ip in table if ip.endswith("/32")}
        assert v4 == {f"{m.address}/32" for m in members if m.worker_id != owner}
        for m in members:  # the direct address always goes to its owner
            if m.worker_id != owner:
                assert table[f"{direct_address(m.address)}/128"] == m.worker_id
        assert peer_map.forwards == (owner in relays.values())


# -- relay rule -----------------------------------------------------------------------------

LOST = PathObservation(None, {"w-2": 30.0})
SLOW = PathObservation(100.0, {"w-2": 30.0})
FINE = PathObservation(10.0, {"w-2": 30.0})


def run(state: PathState, *seen: PathObservation) -> PathState:
    for s in seen:
        state = decide_path(state, s)
    return state


def test_one_lost_probe_does_not_relay_two_do() -> None:
    assert run(PathState(), LOST).relay is None
    assert run(PathState(), *[LOST] * FAILS_TO_RELAY).relay == "w-2"
    assert run(PathState(), LOST, FINE, LOST).relay is None


def test_a_much_faster_relay_is_taken_at_once() -> None:
    assert run(PathState(), SLOW).relay == "w-2"
    # 30 ms is not under half of 50 ms
    assert run(PathState(), PathObservation(50.0, {"w-2": 30.0})).relay is None
    # under half, but a saving of 1 ms is LAN noise
    assert run(PathState(), PathObservation(2.0, {"w-2": 0.8})).relay is None


def test_the_best_relay_is_chosen() -> None:
    seen = PathObservation(None, {"w-2": 30.0, "w-3": 12.0, "w-4": 20.0})
    assert run(PathState(), seen, seen).relay == "w-3"


def test_no_relay_means_staying_direct() -> None:
    assert run(PathState(), *[PathObservation(None, {})] * 5).relay is None


def test_going_back_needs_consecutive_good_direct_probes() -> None:
    relayed = run(PathState(), LOST, LOST)
    assert run(relayed, *[FINE] * (GOOD_TO_DIRECT - 1)).relay == "w-2"
    assert run(relayed, *[FINE] * GOOD_TO_DIRECT).relay is None
    # a loss in the middle restarts the count
    flapping = [FINE] * (GOOD_TO_DIRECT - 1) + [LOST] + [FINE] * (GOOD_TO_DIRECT - 1)
    assert run(relayed, *flapping).relay == "w-2"
    # direct answering but still much slower than the relay is not good enough
    assert run(run(PathState(), SLOW), *[SLOW] * 10).relay == "w-2"


def test_a_relay_that_stops_answering_is_left_at_once() -> None:
    relayed = run(PathState(), LOST, LOST)
    assert run(relayed, PathObservation(None, {"w-3": 40.0})).relay == "w-3"
    assert run(relayed, PathObservation(None, {})).relay is None
    assert run(relayed, PathObservation(10.0, {"w-3": 40.0})).relay is None


def test_observe_sums_the_two_legs_and_takes_the_worse_direction() -> None:
    probes = {("a", "b"): None, ("a", "r"): 3.0, ("r", "a"): 4.0, ("r", "b"): 5.0}
    seen = observe(probes, ["a", "b", "r", "s"], "a", "b")
    assert seen.direct_rtt_ms is None
    assert seen.relay_rtt_ms == {"r": 9.0}


def test_a_cut_link_relays_through_the_third_member_and_heals_back() -> None:
    ids = ["a", "b", "c"]
    healthy = {(x, y): 1.0 for x in ids for y in ids if x != y}
    cut = {**healthy, ("a", "b"): None, ("b", "a"): None}
    states: dict[tuple[str, str], PathState] = {}
    for _ in range(FAILS_TO_RELAY):
        states = step_relays(ids, states, cut)
    assert relay_decisions(states) == {("a", "b"): "c"}
    for _ in range(GOOD_TO_DIRECT):
        states = step_relays(ids, states, healthy)
    assert relay_decisions(states) == {}


rtts = st.one_of(st.none(), st.floats(min_value=0.1, max_value=500.0))


@given(st.integers(min_value=2, max_value=6), st.data())
def test_step_relays_always_yields_maps_peer_maps_accepts(n: int, data: st.DataObject) -> None:
    members = [member(i) for i in range(n)]
    ids = [m.worker_id for m in members]
    states: dict[tuple[str, str], PathState] = {}
    for _ in range(data.draw(st.integers(min_value=1, max_value=8))):
        probes = {(x, y): data.draw(rtts) for x in ids for y in ids if x != y}
        states = step_relays(ids, states, probes)
        decisions = relay_decisions(states)
        maps = peer_maps(members, decisions)  # raises on an inconsistent decision
        for a, b in decisions:
            assert routed(maps[a])[f"{members[ids.index(b)].address}/32"] == decisions[(a, b)]
