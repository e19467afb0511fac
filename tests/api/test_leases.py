"""Booking and the lease life cycle, driven through the API by agents' reports and the
coordinator's ticker, with a manual clock (one billing hour is 100 s here)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tests.api.conftest import HOUR, AgentSim, Api


@pytest.fixture
def renter(api: Api) -> str:
    return api.account("renter", "renter")


@pytest.fixture
def agents(api: Api) -> list[AgentSim]:
    sims = [api.agent(api.account("supplier", f"s{i}")) for i in range(2)]
    for sim in sims:
        sim.register(devices=2)
    return sims


def _cluster(api: Api, key: str, cluster_id: str) -> dict[str, Any]:
    r = api.http.get(f"/v1/clusters/{cluster_id}", headers=api.as_key(key))
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def _device_states(api: Api, key: str) -> dict[str, str]:
    workers = api.http.get("/v1/workers", headers=api.as_key(key)).json()
    return {d["id"]: d["status"] for w in workers for d in w["devices"]}


def _bring_up(agents: list[AgentSim], states: tuple[str, ...] = ("provisioning", "ready")) -> None:
    for sim in agents:
        for lease in sim.link.heartbeat().leases:
            for device in lease.local_devices:
                for state in states:
                    sim.link.report(lease.lease_id, device, state)


def _release_all(agents: list[AgentSim], lease_id: str) -> None:
    for sim in agents:
        for device in (sim.device(0), sim.device(1)):
            try:
                sim.link.report(lease_id, device, "released")
            except Exception as exc:  # devices of other leases are not this lease's
                assert "404" in str(exc)


def test_booking_with_no_devices_says_what_is_missing(api: Api, renter: str) -> None:
    r = api.book(renter, devices=2)
    assert r.status_code == 409
    body = r.json()
    assert body["error"] == "insufficient_capacity"
    assert (body["requested"], body["matching"]) == (2, 0)


def test_booking_too_many_counts_what_each_constraint_ruled_out(
    api: Api, renter: str, agents: list[AgentSim]
) -> None:
    r = api.book(renter, devices=3, regions=["us-east"])
    assert r.status_code == 409
    assert r.json()["excluded_by"] == {"region": 4}
    r = api.book(renter, devices=2, max_price_per_hour="0.05")
    assert r.json()["excluded_by"] == {"price": 4}
    r = api.book(renter, devices=1, kind="gpu")
    assert r.json()["excluded_by"] == {"kind": 4}


def test_a_lease_goes_pending_provisioning_ready(
    api: Api, renter: str, agents: list[AgentSim]
) -> None:
    r = api.book(renter, devices=3, hours=2)
    assert r.status_code == 201, r.text
    cluster = r.json()
    assert cluster["state"] == "pending"
    assert len(cluster["members"]) == 3
    t1, t2 = (datetime.fromisoformat(cluster[k]) for k in ("t1", "t2"))
    assert (t2 - t1).total_seconds() == pytest.approx(2 * HOUR)
    assert cluster["total_price"] == "0.60"  # 3 devices x 0.10 x 2 h
    leased = [d for d, s in _device_states(api, renter).items() if s == "leased"]
    assert sorted(leased) == sorted(m["device_id"] for m in cluster["members"])

    _bring_up(agents, ("provisioning",))
    assert _cluster(api, renter, cluster["id"])["state"] == "provisioning"
    _bring_up(agents, ("ready",))
    shown = _cluster(api, renter, cluster["id"])
    assert shown["state"] == "ready"
    assert [e["state"] for e in shown["events"]] == ["pending", "provisioning", "ready"]


def test_agents_learn_only_their_own_devices_of_a_lease(
    api: Api, renter: str, agents: list[AgentSim]
) -> None:
    cluster = api.book(renter, devices=3).json()
    seen = {}
    for sim in agents:
        for lease in sim.link.heartbeat().leases:
            assert all(d.startswith(sim.worker_id) for d in lease.local_devices)
            seen.update(dict.fromkeys(lease.local_devices, lease.lease_id))
    assert sorted(seen) == sorted(m["device_id"] for m in cluster["members"])


def test_booked_devices_are_not_booked_twice(api: Api, renter: str, agents: list[AgentSim]) -> None:
    assert api.book(renter, devices=3).status_code == 201
    second = api.book(renter, devices=2)
    assert second.status_code == 409
    assert second.json()["excluded_by"] == {"availability": 3}
    assert api.book(renter, devices=1).status_code == 201


def test_extend_adds_whole_hours_to_t2(api: Api, renter: str, agents: list[AgentSim]) -> None:
    cluster = api.book(renter, devices=1).json()
    r = api.http.post(
        f"/v1/clusters/{cluster['id']}/extend", json={"hours": 2}, headers=api.as_key(renter)
    )
    assert r.status_code == 200
    old, new = (datetime.fromisoformat(x["t2"]) for x in (cluster, r.json()))
    assert (new - old).total_seconds() == pytest.approx(2 * HOUR)
    assert r.json()["hours"] == 3


def test_terminate_ends_the_lease_once_every_member_released(
    api: Api, renter: str, agents: list[AgentSim]
) -> None:
    cluster = api.book(renter, devices=2).json()
    _bring_up(agents)
    r = api.http.post(f"/v1/clusters/{cluster['id']}/terminate", headers=api.as_key(renter))
    assert r.json()["state"] == "ending"
    assert all(not sim.link.heartbeat().leases for sim in agents)  # tear down now
    again = api.http.post(f"/v1/clusters/{cluster['id']}/terminate", headers=api.as_key(renter))
    assert again.status_code == 409
    _release_all(agents, cluster["lease_id"])
    assert _cluster(api, renter, cluster["id"])["state"] == "ended"
    assert set(_device_states(api, renter).values()) == {"idle"}


def test_extending_an_ended_lease_is_a_conflict(
    api: Api, renter: str, agents: list[AgentSim]
) -> None:
    cluster = api.book(renter, devices=1).json()
    api.http.post(f"/v1/clusters/{cluster['id']}/terminate", headers=api.as_key(renter))
    r = api.http.post(
        f"/v1/clusters/{cluster['id']}/extend", json={"hours": 1}, headers=api.as_key(renter)
    )
    assert r.status_code == 409


def test_lease_ends_by_itself_at_t2(api: Api, renter: str, agents: list[AgentSim]) -> None:
    cluster = api.book(renter, devices=2).json()
    _bring_up(agents)
    api.clock.advance(HOUR - 1)
    api.tick()
    assert _cluster(api, renter, cluster["id"])["state"] == "ready"
    api.clock.advance(1)
    for sim in agents:  # agents keep heartbeating, so they stay up
        sim.link.heartbeat()
    api.tick()
    assert _cluster(api, renter, cluster["id"])["state"] == "ending"
    _release_all(agents, cluster["lease_id"])
    shown = _cluster(api, renter, cluster["id"])
    assert shown["state"] == "ended"
    assert "T2 reached" in [e["note"] for e in shown["events"]]


def test_lease_that_never_gets_ready_fails_and_frees_its_devices(
    api: Api, renter: str, agents: list[AgentSim]
) -> None:
    cluster = api.book(renter, devices=2).json()
    api.clock.advance(61)  # past the 60 s provisioning deadline
    for sim in agents:
        sim.link.heartbeat()
    api.tick()
    shown = _cluster(api, renter, cluster["id"])
    assert shown["state"] == "failed"
    assert "provisioning deadline" in shown["reason"]
    assert set(_device_states(api, renter).values()) == {"idle"}


def test_a_member_that_fails_fails_the_lease(api: Api, renter: str, agents: list[AgentSim]) -> None:
    cluster = api.book(renter, devices=4).json()
    member = cluster["members"][0]
    sim = next(s for s in agents if s.worker_id == member["worker_id"])
    state = sim.link.report(cluster["lease_id"], member["device_id"], "failed", "disk full")
    assert state == "failed"
    shown = _cluster(api, renter, cluster["id"])
    assert shown["reason"] == "disk full"


def test_worker_that_misses_three_heartbeats_is_down_and_leaves_the_pool(
    api: Api, renter: str, agents: list[AgentSim]
) -> None:
    quiet, alive = agents
    api.clock.advance(29)
    alive.link.heartbeat()
    api.tick()
    assert "down" not in _device_states(api, renter).values()
    api.clock.advance(2)  # quiet's last heartbeat is now 31 s old: 3 missed at 10 s
    alive.link.heartbeat()
    api.tick()
    workers = {w["id"]: w for w in api.http.get("/v1/workers", headers=api.as_key(renter)).json()}
    assert workers[quiet.worker_id]["status"] == "down"
    assert {d["status"] for d in workers[quiet.worker_id]["devices"]} == {"down"}
    assert api.book(renter, devices=3).json()["excluded_by"] == {"availability": 2}
    quiet.link.heartbeat()
    assert api.book(renter, devices=3).status_code == 201


def test_long_poll_answers_when_the_lease_version_moves(
    api: Api, renter: str, agents: list[AgentSim]
) -> None:
    sim = agents[0]
    before = sim.link.leases(version=-1, wait=0)
    unchanged = sim.link.leases(version=before.lease_version, wait=0.3)
    assert unchanged.lease_version == before.lease_version
    api.book(renter, devices=4)
    moved = sim.link.leases(version=before.lease_version, wait=5)
    assert moved.lease_version > before.lease_version
    assert len(moved.leases) == 1


def test_security_tier_needs_a_verified_supplier(
    api: Api, renter: str, agents: list[AgentSim]
) -> None:
    r = api.book(renter, devices=1, security_tier="soc2-verified")
    assert r.json()["excluded_by"] == {"security_tier": 4}
    supplier = agents[0].register().supplier_id
    api.http.put(
        f"/v1/accounts/{supplier}/soc2", json={"verified": True}, headers=api.admin_headers()
    )
    r = api.book(renter, devices=2, security_tier="soc2-verified")
    assert r.status_code == 201
    assert {m["worker_id"] for m in r.json()["members"]} == {agents[0].worker_id}
