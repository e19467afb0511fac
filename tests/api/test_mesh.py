"""The mesh's control plane over the API: keys and addresses, peer maps per cluster, the
long poll, probe reports driving relays, and renters connecting to their own clusters."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from gpupool.agent.link import LinkError
from gpupool.crypto.wgkeys import KeyPair
from tests.api.conftest import AgentSim, Api


def _key(agent: AgentSim, public_key: str | None = None) -> str:
    key = public_key or KeyPair.generate().public_key
    address: str = agent.link.call("POST", "/v1/agent/mesh/key", {"public_key": key})["address"]
    return address


def _map(agent: AgentSim, lease_id: str, version: str = "", wait: float = 0) -> dict[str, Any]:
    path = f"/v1/agent/mesh/leases/{lease_id}?version={version}&wait={wait:g}"
    data: dict[str, Any] = agent.link.call("GET", path)
    return data


def _endpoint(agent: AgentSim, lease_id: str, endpoint: str) -> None:
    path = f"/v1/agent/mesh/leases/{lease_id}/endpoint"
    assert agent.link.call("PUT", path, {"endpoint": endpoint}) == {"endpoint": endpoint}


def _probes(agent: AgentSim, lease_id: str, rtts: dict[str, float | None]) -> bool:
    body = {"rtt_ms": rtts}
    stepped: bool = agent.link.call("POST", f"/v1/agent/mesh/leases/{lease_id}/probes", body)[
        "stepped"
    ]
    return stepped


@pytest.fixture
def three(api: Api) -> list[AgentSim]:
    agents = [api.agent(api.account("supplier", f"s{i}")) for i in range(3)]
    for a in agents:
        a.register(devices=1)
    return agents


def _cluster(api: Api, renter: str, devices: int) -> tuple[str, str]:
    r = api.book(renter, devices=devices)
    assert r.status_code == 201, r.text
    cluster_id: str = r.json()["id"]
    return cluster_id, "l-" + cluster_id.removeprefix("c-")


def test_addresses_are_stable_across_rotation_and_never_shared(
    api: Api, three: list[AgentSim]
) -> None:
    first = [_key(a) for a in three]
    assert len(set(first)) == 3
    assert all(a.startswith("100.") for a in first)
    assert _key(three[0]) == first[0]  # a new key keeps the address


def test_a_key_cannot_be_taken_from_another_node(api: Api, three: list[AgentSim]) -> None:
    key = KeyPair.generate().public_key
    _key(three[0], key)
    with pytest.raises(LinkError) as err:
        _key(three[1], key)
    assert err.value.status == 409


@pytest.mark.parametrize("bad", ["short", "A" * 44, "!" * 44])
def test_a_bad_key_is_refused(api: Api, three: list[AgentSim], bad: str) -> None:
    with pytest.raises(LinkError) as err:
        _key(three[0], bad)
    assert err.value.status == 422


def test_members_see_each_other_and_nobody_else(api: Api, three: list[AgentSim]) -> None:
    renter = api.account("renter")
    for a in three:
        _key(a)
    _, lease = _cluster(api, renter, 2)
    members = [a for a in three if _member_of(a, lease)]
    outsider = next(a for a in three if a not in members)
    assert len(members) == 2
    _endpoint(members[0], lease, "10.0.0.1:51820")
    m0, m1 = _map(members[0], lease), _map(members[1], lease)
    assert [p["worker_id"] for p in m0["peers"]] == [members[1].worker_id]
    assert [p["worker_id"] for p in m1["peers"]] == [members[0].worker_id]
    assert m1["peers"][0]["endpoint"] == "10.0.0.1:51820"
    assert f"{m0['address']}/32" in m1["peers"][0]["allowed_ips"]
    with pytest.raises(LinkError) as err:
        _map(outsider, lease)
    assert err.value.status == 404
    with pytest.raises(LinkError) as err:
        _endpoint(outsider, lease, "10.0.0.9:51820")
    assert err.value.status == 404


def _member_of(agent: AgentSim, lease_id: str) -> bool:
    try:
        _map(agent, lease_id)
    except LinkError as exc:
        assert exc.status == 404
        return False
    return True


@pytest.mark.parametrize("bad", ["nowhere", "10.0.0.1", "10.0.0.1:0", "10.0.0.1:70000", "x:1"])
def test_a_bad_endpoint_is_refused(api: Api, three: list[AgentSim], bad: str) -> None:
    renter = api.account("renter")
    _key(three[0])
    _, lease = _cluster(api, renter, 3)
    with pytest.raises(LinkError) as err:
        _endpoint(three[0], lease, bad)
    assert err.value.status == 422


def test_long_poll_answers_when_the_map_changes(api: Api, three: list[AgentSim]) -> None:
    renter = api.account("renter")
    for a in three:
        _key(a)
    _, lease = _cluster(api, renter, 3)
    current = _map(three[0], lease)
    got: dict[str, Any] = {}

    def poll() -> None:
        got["map"] = _map(three[0], lease, current["version"], wait=10)
        got["at"] = time.monotonic()

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.5)
    changed_at = time.monotonic()
    _endpoint(three[1], lease, "10.0.0.2:51820")
    thread.join(timeout=15)
    assert got["map"]["version"] != current["version"]
    assert got["at"] - changed_at < 2.0  # the bound for a map change
    peer = next(p for p in got["map"]["peers"] if p["worker_id"] == three[1].worker_id)
    assert peer["endpoint"] == "10.0.0.2:51820"


def test_lost_probes_set_a_relay_in_both_maps(api: Api, three: list[AgentSim]) -> None:
    renter = api.account("renter")
    for a in three:
        _key(a)
    _, lease = _cluster(api, renter, 3)
    a, b, c = three
    for _ in range(3):
        _probes(a, lease, {b.worker_id: None, c.worker_id: 1.0})
        _probes(b, lease, {a.worker_id: None, c.worker_id: 1.0})
        _probes(c, lease, {a.worker_id: 1.0, b.worker_id: 1.0})
        api.clock.advance(1.0)
    ma, mc = _map(a, lease), _map(c, lease)
    to_c = next(p for p in ma["peers"] if p["worker_id"] == c.worker_id)
    assert f"{_map(b, lease)['address']}/32" in to_c["allowed_ips"]  # b through c
    assert mc["forwards"] is True


def test_probes_must_name_peers(api: Api, three: list[AgentSim]) -> None:
    renter = api.account("renter")
    _key(three[0])
    _, lease = _cluster(api, renter, 3)
    for bad in ({"w-unknown": 1.0}, {three[0].worker_id: 1.0}):
        with pytest.raises(LinkError) as err:
            _probes(three[0], lease, bad)
        assert err.value.status == 422
    with pytest.raises(LinkError) as err:
        _probes(three[0], lease, {three[1].worker_id: -1.0})
    assert err.value.status == 422


def test_a_member_that_leaves_is_dropped_from_the_maps(api: Api, three: list[AgentSim]) -> None:
    renter = api.account("renter")
    for a in three:
        _key(a)
    cluster, lease = _cluster(api, renter, 3)
    assert len(_map(three[0], lease)["peers"]) == 2
    r = api.http.post(f"/v1/clusters/{cluster}/terminate", headers=api.as_key(renter))
    assert r.status_code == 200, r.text
    for a in three:
        with pytest.raises(LinkError) as err:
            _map(a, lease)
        assert err.value.status == 404


def test_a_renter_connects_to_its_own_cluster_only(api: Api, three: list[AgentSim]) -> None:
    owner, other = api.account("renter", "owner"), api.account("renter", "other")
    for a in three:
        _key(a)
    cluster, lease = _cluster(api, owner, 3)
    client = KeyPair.generate()
    url = f"/v1/clusters/{cluster}/mesh/connect"
    r = api.http.post(url, json={"public_key": client.public_key}, headers=api.as_key(other))
    assert r.status_code == 404
    r = api.http.post(url, json={"public_key": client.public_key})
    assert r.status_code == 401
    r = api.http.post(url, json={"public_key": "nope"}, headers=api.as_key(owner))
    assert r.status_code == 422
    r = api.http.post(url, json={"public_key": client.public_key}, headers=api.as_key(owner))
    assert r.status_code == 200, r.text
    got = r.json()
    assert len(got["peers"]) == 3
    assert "private" not in r.text.lower()
    for a in three:
        peers = _map(a, lease)["peers"]
        assert got["address"] in {p["address"] for p in peers}
    again = api.http.post(
        url, json={"public_key": KeyPair.generate().public_key}, headers=api.as_key(owner)
    )
    assert again.json()["address"] == got["address"]  # a new key keeps the address


def test_connecting_to_a_cluster_without_a_mesh_is_refused_not_an_empty_config(
    api: Api, three: list[AgentSim]
) -> None:
    renter = api.account("renter", "meshless")
    cluster, _ = _cluster(api, renter, 2)  # no member registered a WireGuard key
    url = f"/v1/clusters/{cluster}/mesh/connect"
    r = api.http.post(
        url, json={"public_key": KeyPair.generate().public_key}, headers=api.as_key(renter)
    )
    assert r.status_code == 409, r.text
    assert "has no mesh" in r.json()["message"]
    shown = api.http.get(f"/v1/clusters/{cluster}", headers=api.as_key(renter)).json()
    members = {m["worker_id"] for m in shown["members"]}
    (outsider,) = [a for a in three if a.worker_id not in members]
    _key(outsider)  # a keyed worker outside the cluster does not make it a mesh
    r = api.http.post(
        url, json={"public_key": KeyPair.generate().public_key}, headers=api.as_key(renter)
    )
    assert r.status_code == 409, r.text


def test_mesh_routes_need_a_signed_worker(api: Api, three: list[AgentSim]) -> None:
    key = KeyPair.generate().public_key
    r = api.http.post("/v1/agent/mesh/key", json={"public_key": key})
    assert r.status_code == 401
    r = api.http.get("/v1/agent/mesh/leases/l-x", headers={"X-Gpupool-Worker": "w-x"})
    assert r.status_code == 401
    assert "error" in r.json()
