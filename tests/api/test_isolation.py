"""Tenant isolation: a renter sees and acts on its own clusters only, a supplier on its own
workers only, and a worker reports only on its own devices."""

from __future__ import annotations

import pytest

from gpupool.agent.link import LinkError
from tests.api.conftest import Api


def test_another_renters_cluster_is_invisible(api: Api) -> None:
    api.agent(api.account("supplier")).register(devices=2)
    alice, mallory = api.account("renter", "alice"), api.account("renter", "mallory")
    cluster = api.book(alice, devices=1).json()
    cid = cluster["id"]
    as_mallory = api.as_key(mallory)
    assert api.http.get(f"/v1/clusters/{cid}", headers=as_mallory).status_code == 404
    assert api.http.post(f"/v1/clusters/{cid}/terminate", headers=as_mallory).status_code == 404
    assert (
        api.http.post(
            f"/v1/clusters/{cid}/extend", json={"hours": 1}, headers=as_mallory
        ).status_code
        == 404
    )
    assert api.http.get("/v1/clusters", headers=as_mallory).json() == []
    # ...and nothing mallory tried changed it
    shown = api.http.get(f"/v1/clusters/{cid}", headers=api.as_key(alice)).json()
    assert (shown["state"], shown["t2"]) == ("pending", cluster["t2"])


def test_suppliers_cannot_book_and_renters_cannot_register(api: Api) -> None:
    supplier = api.account("supplier")
    assert api.book(supplier).status_code == 403
    with pytest.raises(LinkError) as exc:
        api.agent(api.account("renter")).register()
    assert exc.value.status == 403


def test_a_supplier_lists_only_its_own_workers(api: Api) -> None:
    s1, s2 = api.account("supplier"), api.account("supplier")
    w1 = api.agent(s1)
    w1.register()
    api.agent(s2).register()
    mine = api.http.get("/v1/workers", headers=api.as_key(s1)).json()
    assert [w["id"] for w in mine] == [w1.worker_id]
    assert len(api.http.get("/v1/workers", headers=api.as_key(api.account("renter"))).json()) == 2
    assert len(api.http.get("/v1/workers", headers=api.admin_headers()).json()) == 2


def test_a_worker_cannot_report_on_another_workers_device(api: Api) -> None:
    owner, other = api.agent(api.account("supplier")), api.agent(api.account("supplier"))
    owner.register(devices=1)
    other.register(devices=1)
    renter = api.account("renter")
    cluster = api.book(renter, devices=1, max_price_per_hour="0.10").json()
    member = cluster["members"][0]
    intruder = other if member["worker_id"] == owner.worker_id else owner
    with pytest.raises(LinkError) as exc:
        intruder.link.report(cluster["lease_id"], member["device_id"], "released")
    assert exc.value.status == 404
    shown = api.http.get(f"/v1/clusters/{cluster['id']}", headers=api.as_key(renter)).json()
    assert shown["members"][0]["state"] == "assigned"
