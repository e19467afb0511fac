"""Accounts: only the admin creates them; keys are shown once and stored hashed."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

from gpupool.coordinator.storage.tables import accounts
from tests.api.conftest import Api


def test_creating_an_account_needs_the_admin_key(api: Api) -> None:
    body = {"role": "renter", "name": "alice"}
    assert api.http.post("/v1/accounts", json=body).status_code == 401
    wrong = api.http.post("/v1/accounts", json=body, headers=api.as_key("gpa_wrong"))
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "unauthorized"
    renter_key = api.account("renter")
    as_renter = api.http.post("/v1/accounts", json=body, headers=api.as_key(renter_key))
    assert as_renter.status_code == 401


def test_api_key_is_shown_once_and_stored_only_as_a_hash(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = api.account("supplier", "bob")
    me = api.http.get("/v1/accounts/me", headers=api.as_key(key))
    assert me.status_code == 200
    assert me.json()["role"] == "supplier"
    assert key not in me.text
    with api.db.engine.connect() as conn:
        rows = conn.execute(sa.select(accounts)).all()
    stored = " ".join(str(v) for row in rows for v in row)
    assert key not in stored
    assert key not in caplog.text


def test_unknown_key_is_refused_with_a_json_reason(api: Api) -> None:
    r = api.http.get("/v1/accounts/me", headers=api.as_key("gpr_not-a-key"))
    assert r.status_code == 401
    assert r.json() == {"error": "unauthorized", "message": "unknown API key"}


def test_admin_verifies_a_suppliers_soc2(api: Api) -> None:
    key = api.account("supplier")
    me = api.http.get("/v1/accounts/me", headers=api.as_key(key)).json()
    assert me["soc2_verified"] is False
    r = api.http.put(
        f"/v1/accounts/{me['id']}/soc2", json={"verified": True}, headers=api.admin_headers()
    )
    assert r.status_code == 200
    assert r.json()["soc2_verified"] is True
    assert (
        api.http.put(
            f"/v1/accounts/{me['id']}/soc2", json={"verified": True}, headers=api.as_key(key)
        ).status_code
        == 401
    )
    assert (
        api.http.put(
            "/v1/accounts/a-nobody/soc2", json={"verified": True}, headers=api.admin_headers()
        ).status_code
        == 404
    )


def test_openapi_document_describes_the_v1_api(api: Api) -> None:
    doc = api.http.get("/v1/openapi.json").json()
    for path in (
        "/v1/clusters",
        "/v1/clusters/{cluster_id}/extend",
        "/v1/agent/register",
        "/v1/agent/heartbeat",
        "/v1/workers",
        "/v1/accounts",
    ):
        assert path in doc["paths"]
