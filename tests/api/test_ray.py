"""Ray on a cluster through the API: agents' Ray node reports, the head's address for the
members only, the renter's Ray view and job proxy (404 for anyone else), and how a member's
or the head's death moves the lease."""

from __future__ import annotations

from typing import Any

import pytest

from gpupool.agent.link import LinkError
from gpupool.wire.ray import RayNodeReport
from tests.api.conftest import AgentSim, Api


@pytest.fixture
def renter(api: Api) -> str:
    return api.account("renter", "renter")


@pytest.fixture
def agents(api: Api) -> list[AgentSim]:
    sims = [api.agent(api.account("supplier", f"s{i}")) for i in range(3)]
    for sim in sims:
        sim.register(devices=1)
    return sims


def _report(sim: AgentSim, lease_id: str, role: str, state: str, **extra: Any) -> None:
    body = {"role": role, "state": state, "address": "10.0.0.1", "mesh": False, **extra}
    sim.link.ray_report(lease_id, RayNodeReport.model_validate(body))


def _booked(api: Api, renter: str, agents: list[AgentSim]) -> tuple[dict[str, Any], AgentSim]:
    cluster = api.book(renter, devices=3).json()
    head_worker = next(
        m["worker_id"] for m in cluster["members"] if m["device_id"] == cluster["head_device_id"]
    )
    head = next(a for a in agents if a.worker_id == head_worker)
    return cluster, head


def _ready(api: Api, cluster: dict[str, Any], agents: list[AgentSim]) -> None:
    for sim in agents:
        for state in ("provisioning", "ready"):
            sim.link.report(cluster["lease_id"], sim.device(0), state)


def test_members_learn_the_heads_address_and_outsiders_do_not(
    api: Api, renter: str, agents: list[AgentSim]
) -> None:
    cluster, head = _booked(api, renter, agents)
    lease_id = cluster["lease_id"]
    other = next(a for a in agents if a is not head)
    assert other.link.ray_head(lease_id).head is None  # not reported yet
    _report(
        head, lease_id, "head", "started",
        gcs_address="10.0.0.1:6379", dashboard_url="http://10.0.0.1:8265",
    )  # fmt: skip
    answer = other.link.ray_head(lease_id)
    assert answer.gcs_address == "10.0.0.1:6379"
    assert answer.dashboard_url == "http://10.0.0.1:8265"

    outsider = api.agent(api.account("supplier", "outsider"))
    outsider.register(devices=1)
    with pytest.raises(LinkError) as refused:
        outsider.link.ray_head(lease_id)
    assert refused.value.status == 404
    with pytest.raises(LinkError) as refused:
        _report(outsider, lease_id, "head", "started")
    assert refused.value.status == 404
    with pytest.raises(LinkError) as refused:  # a worker member cannot claim the head
        _report(other, lease_id, "head", "started", gcs_address="10.0.0.1:1")
    assert refused.value.status == 409
    assert other.link.ray_head(lease_id).gcs_address == "10.0.0.1:6379"


def test_renter_sees_the_ray_view_and_another_renter_gets_404_everywhere(
    api: Api, renter: str, agents: list[AgentSim]
) -> None:
    cluster, head = _booked(api, renter, agents)
    cid = cluster["id"]
    _report(
        head, cluster["lease_id"], "head", "joined", node_id="ab" * 28, address="127.0.0.1",
        gcs_address="127.0.0.1:1", dashboard_url="http://127.0.0.1:1",
    )  # fmt: skip
    view = api.http.get(f"/v1/clusters/{cid}/ray", headers=api.as_key(renter)).json()
    assert view["dashboard_url"] == "http://127.0.0.1:1"
    assert view["mesh"] is False
    assert [(n["role"], n["state"]) for n in view["nodes"]] == [("head", "joined")]

    stranger = api.as_key(api.account("renter", "stranger"))
    package = "_ray_pkg_" + "0" * 32 + ".zip"
    for method, path, body in [
        ("GET", f"/v1/clusters/{cid}/ray", None),
        ("GET", f"/v1/clusters/{cid}/jobs", None),
        ("POST", f"/v1/clusters/{cid}/jobs", {"entrypoint": "echo pwned"}),
        ("GET", f"/v1/clusters/{cid}/jobs/raysubmit_x", None),
        ("GET", f"/v1/clusters/{cid}/jobs/raysubmit_x/logs", None),
        ("POST", f"/v1/clusters/{cid}/jobs/raysubmit_x/stop", None),
        ("PUT", f"/v1/clusters/{cid}/jobs/packages/{package}", None),
    ]:
        r = api.http.request(method, path, json=body, headers=stranger)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"] == "not_found"
    # The owner reaches the proxy, which says plainly that the head does not answer.
    r = api.http.get(f"/v1/clusters/{cid}/jobs", headers=api.as_key(renter))
    assert r.status_code == 502 and r.json()["error"] == "ray_unreachable"


def test_job_proxy_refuses_bad_ids_and_clusters_without_a_running_head(
    api: Api, renter: str, agents: list[AgentSim]
) -> None:
    cluster, head = _booked(api, renter, agents)
    cid, key = cluster["id"], api.as_key(renter)
    r = api.http.get(f"/v1/clusters/{cid}/jobs", headers=key)
    assert r.status_code == 409 and "not running yet" in r.json()["message"]
    _report(
        head, cluster["lease_id"], "head", "started",
        address="127.0.0.1", dashboard_url="http://127.0.0.1:1",
    )  # fmt: skip
    r = api.http.get(f"/v1/clusters/{cid}/jobs/bad.id/logs", headers=key)
    assert r.status_code == 422
    r = api.http.put(f"/v1/clusters/{cid}/jobs/packages/evil.zip", content=b"x", headers=key)
    assert r.status_code == 422
    r = api.http.post(f"/v1/clusters/{cid}/jobs", json={"entrypoint": ""}, headers=key)
    assert r.status_code == 422
    api.http.post(f"/v1/clusters/{cid}/terminate", headers=key)
    r = api.http.get(f"/v1/clusters/{cid}/jobs", headers=key)
    assert r.status_code == 409 and "gone" in r.json()["message"]


def test_a_dead_worker_member_degrades_the_lease_and_a_dead_head_fails_it(
    api: Api, renter: str, agents: list[AgentSim]
) -> None:
    cluster, head = _booked(api, renter, agents)
    lease_id, cid = cluster["lease_id"], cluster["id"]
    _ready(api, cluster, agents)

    def show() -> dict[str, Any]:
        shown: dict[str, Any] = api.http.get(
            f"/v1/clusters/{cid}", headers=api.as_key(renter)
        ).json()
        return shown

    assert show()["state"] == "ready"
    worker = next(a for a in agents if a is not head)
    assert worker.link.report(lease_id, worker.device(0), "failed", "raylet died") == "degraded"
    shown = show()
    assert shown["state"] == "degraded"
    assert shown["events"][-1]["note"] == "raylet died"
    # A degraded lease still runs: its other members stay, it can be extended.
    r = api.http.post(f"/v1/clusters/{cid}/extend", json={"hours": 1}, headers=api.as_key(renter))
    assert r.status_code == 200
    state = head.link.report(lease_id, head.device(0), "failed", "the Ray head died (gcs)")
    assert state == "failed"
    assert show()["reason"] == "the Ray head died (gcs)"


@pytest.mark.parametrize(
    ("address", "dashboard_url"),
    [
        ("10.0.0.1", "http://169.254.169.254:80"),  # another host: cloud metadata
        ("169.254.169.254", "http://169.254.169.254:80"),  # link-local node address
        ("10.0.0.1", "http://10.0.0.1"),  # no port
        ("10.0.0.1", "https://10.0.0.1:443"),
        ("head.example", "http://head.example:8265"),  # names resolve elsewhere later
    ],
)
def test_a_head_may_only_name_its_own_dashboard(
    api: Api, renter: str, agents: list[AgentSim], address: str, dashboard_url: str
) -> None:
    """The proxy sends renters' requests to this URL: no pointing it at other hosts."""
    cluster, head = _booked(api, renter, agents)
    with pytest.raises(LinkError) as refused:
        _report(
            head, cluster["lease_id"], "head", "started",
            address=address, dashboard_url=dashboard_url,
        )  # fmt: skip
    assert refused.value.status == 422
