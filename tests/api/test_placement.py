"""Network coordinates through heartbeats, probe peers, and latency-aware booking end to
end through the API and the database."""

from __future__ import annotations

from typing import Any

import pytest

from gpupool.wire import models as w
from tests.api.conftest import AgentSim, Api


@pytest.fixture
def renter(api: Api) -> str:
    return api.account("renter", "renter")


@pytest.fixture
def agents(api: Api) -> list[AgentSim]:
    sims = [api.agent(api.account("supplier", f"s{i}")) for i in range(3)]
    for sim in sims:
        sim.register(devices=2)
    return sims


def _report(agent: AgentSim, x: float, port: int | None = 40000, **extra: Any) -> w.AssignmentsOut:
    return agent.link.heartbeat(
        w.HeartbeatIn(
            coordinate=w.CoordinateIn(vec=[x, 0.0, 0.0, 0.0], height=0.5, error=0.2),
            probe_port=port,
            **extra,
        )
    )


def test_heartbeats_store_coordinates_and_name_peers_to_probe(
    api: Api, agents: list[AgentSim]
) -> None:
    for i, agent in enumerate(agents):
        _report(agent, float(i), port=40000 + i, probe_host=f"10.0.0.{i + 1}")
    answer = _report(agents[0], 0.0, port=40000, probe_host="10.0.0.1")
    peers = {(p.worker_id, p.host, p.port) for p in answer.probe_peers}
    expected = {(a.worker_id, f"10.0.0.{i + 1}", 40000 + i) for i, a in enumerate(agents)}
    assert peers and peers <= expected - {(agents[0].worker_id, "10.0.0.1", 40000)}
    with api.db.transaction() as tx:
        device = tx.workers.devices(agents[1].worker_id)[0]
    assert device.coordinate is not None and device.coordinate.vec[0] == 1.0


def test_booking_picks_the_close_workers_and_reports_the_predicted_diameter(
    api: Api, renter: str, agents: list[AgentSim]
) -> None:
    a, b, c = agents
    _report(a, 0.0)
    _report(b, 200.0)
    _report(c, 3.0)
    r = api.book(renter, devices=4)
    assert r.status_code == 201, r.text
    body = r.json()
    workers = {m["device_id"].split(":")[0] for m in body["members"]}
    assert workers == {a.worker_id, c.worker_id}
    assert body["predicted_diameter_ms"] == 4.0  # 3 ms apart plus two 0.5 ms heights


def test_a_malformed_coordinate_is_refused_with_a_reason(api: Api, agents: list[AgentSim]) -> None:
    from gpupool.agent.link import LinkError

    bad = {"coordinate": {"vec": [1.0, 2.0], "height": -1, "error": 0.1}}
    try:
        agents[0].link.call("POST", "/v1/agent/heartbeat", bad)
    except LinkError as exc:
        assert exc.status == 422
    else:
        raise AssertionError("a two-dimensional coordinate was accepted")


def test_an_image_or_egress_booking_goes_only_to_workers_that_offer_it(api: Api) -> None:
    renter = api.account("renter", "r-options")
    plain, docker, both = (api.agent(api.account("supplier", f"opt{i}")) for i in range(3))
    plain.register(devices=2, sandbox="bwrap+cgroup2")
    docker.register(devices=2, sandbox="bwrap+cgroup2+docker")
    both.register(devices=2, sandbox="bwrap+cgroup2+docker+egress")

    r = api.book(renter, devices=2, image="registry.local:5000/team/train:1.2", egress=True)
    assert r.status_code == 201, r.text
    body = r.json()
    assert {m["worker_id"] for m in body["members"]} == {both.worker_id}
    assert body["request"]["image"] == "registry.local:5000/team/train:1.2"
    assert body["request"]["egress"] is True
    # the agent learns both options with its lease
    (lease,) = both.link.heartbeat(w.HeartbeatIn()).leases
    assert (lease.image, lease.egress) == ("registry.local:5000/team/train:1.2", True)

    r = api.book(renter, devices=2, image="train")
    assert r.status_code == 201, r.text
    assert {m["worker_id"] for m in r.json()["members"]} == {docker.worker_id}
    # nothing left that runs Docker: the shortfall names the image as what ruled them out
    r = api.book(renter, devices=1, image="train")
    assert r.status_code == 409, r.text
    assert r.json()["excluded_by"]["image"] == 2, r.text
    assert "2 on workers without Docker" in r.json()["message"]
    r = api.book(renter, devices=1)
    assert r.status_code == 201, r.text
    assert {m["worker_id"] for m in r.json()["members"]} == {plain.worker_id}
    (plain_lease,) = plain.link.heartbeat(w.HeartbeatIn()).leases
    assert (plain_lease.image, plain_lease.egress) == (None, False)


@pytest.mark.parametrize("image", ["", "UPPER/case", "a b", "x" * 256, "name:bad:tag", "../x"])
def test_a_malformed_image_reference_is_refused(api: Api, image: str) -> None:
    renter = api.account("renter", "r-bad-image")
    r = api.book(renter, devices=1, image=image)
    assert r.status_code == 422, r.text
