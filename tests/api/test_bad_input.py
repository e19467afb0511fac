"""Bad input gets a 4xx with a JSON reason, never a 500, and changes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.api.conftest import Api

VALID = {"devices": 1, "kind": "cpu", "hours": 1, "max_price_per_hour": "1"}

BAD_BOOKINGS: dict[str, Any] = {
    "malformed json": b'{"devices": 1, "kind": ',
    "not an object": b"[1, 2, 3]",
    "empty body": b"",
    "devices as text": {**VALID, "devices": "two"},
    "devices as numeric string": {**VALID, "devices": "2"},
    "fractional hours": {**VALID, "hours": 1.5},
    "hours as bool": {**VALID, "hours": True},
    "zero devices": {**VALID, "devices": 0},
    "negative devices": {**VALID, "devices": -3},
    "zero hours": {**VALID, "hours": 0},
    "negative price": {**VALID, "max_price_per_hour": "-1"},
    "price not a number": {**VALID, "max_price_per_hour": "cheap"},
    "price with too many decimals": {**VALID, "max_price_per_hour": "0.0000001"},
    "price is infinite": {**VALID, "max_price_per_hour": "Infinity"},
    "unknown field": {**VALID, "priority": "high"},
    "unknown kind": {**VALID, "kind": "tpu"},
    "unknown security tier": {**VALID, "security_tier": "paranoid"},
    "absurd device count": {**VALID, "devices": 10**30},
    "regions not a list": {**VALID, "regions": "eu-west"},
    "missing hours": {k: v for k, v in VALID.items() if k != "hours"},
    "null devices": {**VALID, "devices": None},
}


def _send(api: Api, path: str, body: Any, headers: dict[str, str]) -> Any:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return api.http.post(
        path, content=content, headers={**headers, "Content-Type": "application/json"}
    )


def _assert_json_4xx(response: Any) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    body: dict[str, Any] = response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["message"], str) and body["message"]
    return body


@pytest.mark.parametrize("name", list(BAD_BOOKINGS))
def test_bad_booking_is_refused_with_a_reason(api: Api, name: str) -> None:
    api.agent(api.account("supplier")).register(devices=2)
    renter = api.account("renter")
    body = _assert_json_4xx(_send(api, "/v1/clusters", BAD_BOOKINGS[name], api.as_key(renter)))
    assert body["error"] == "invalid_request"
    assert api.http.get("/v1/clusters", headers=api.as_key(renter)).json() == []
    assert api.book(renter).status_code == 201  # and the valid booking still works


def test_huge_body_is_refused_before_it_is_read(api: Api) -> None:
    renter = api.account("renter")
    huge = {**VALID, "regions": ["x" * 100] * 2000}  # ~200 KB, the test limit is 64 KB
    body = _assert_json_4xx(_send(api, "/v1/clusters", huge, api.as_key(renter)))
    assert body["error"] == "body_too_large"


def test_huge_chunked_body_without_length_is_refused(api: Api) -> None:
    renter = api.account("renter")

    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b" " * 1024

    r = api.http.post(
        "/v1/clusters",
        content=chunks(),
        headers={**api.as_key(renter), "Content-Type": "application/json"},
    )
    assert _assert_json_4xx(r)["error"] == "body_too_large"


@pytest.mark.parametrize(
    "body",
    [
        {"hours": 0},
        {"hours": -1},
        {"hours": "1"},
        {},
        {"hours": 1, "extra": 1},
    ],
)
def test_bad_extend_is_refused(api: Api, body: dict[str, Any]) -> None:
    api.agent(api.account("supplier")).register(devices=1)
    renter = api.account("renter")
    cid = api.book(renter).json()["id"]
    _assert_json_4xx(_send(api, f"/v1/clusters/{cid}/extend", body, api.as_key(renter)))


def _device(local_name: str) -> dict[str, Any]:
    return {
        "local_name": local_name,
        "kind": "cpu",
        "model": "m",
        "memory_mb": 1,
        "price_per_hour": "1",
    }


@pytest.mark.parametrize(
    "change",
    [
        {"devices": []},
        {"devices": [{"local_name": "cpu0", "kind": "cpu"}]},
        {"location": {"latitude": 91, "longitude": 0, "region": "x"}},
        {"datacenter_tier": 7},
        {"public_key": "short"},
        {"devices": [_device("Bad Name!")]},
        {"devices": [_device("cpu0")] * 2},
    ],
)
def test_bad_registration_is_refused(api: Api, change: dict[str, Any]) -> None:
    from gpupool.agent.link import LinkError

    sim = api.agent(api.account("supplier"))
    body = sim.link  # the real signed link sends whatever JSON we give it
    payload = {
        "public_key": sim.identity.public_key_b64,
        "hostname": "h",
        "location": {"latitude": 0, "longitude": 0, "region": "r"},
        "devices": [_device("cpu0")],
        "agent_version": "t",
        "sandbox": "cgroup2",
        **change,
    }
    with pytest.raises(LinkError) as exc:
        body.call("POST", "/v1/agent/register", payload, with_key=True)
    assert 400 <= exc.value.status < 500
    assert exc.value.message


@pytest.mark.parametrize(
    "payload",
    [
        {"device_id": "x", "state": "exploded"},
        {"device_id": "x"},
        {"device_id": "x", "state": "ready", "reason": "y" * 5000},
        {"device_id": "x", "state": "ready", "lease": "l-1"},
    ],
)
def test_bad_member_report_is_refused(api: Api, payload: dict[str, Any]) -> None:
    from gpupool.agent.link import LinkError

    sim = api.agent(api.account("supplier"))
    sim.register()
    with pytest.raises(LinkError) as exc:
        sim.link.call("POST", "/v1/agent/leases/l-1/members", payload)
    assert exc.value.status == 422


def test_unknown_route_and_wrong_method_are_json(api: Api) -> None:
    r = api.http.get("/v1/nowhere")
    assert _assert_json_4xx(r)["error"] == "not_found"
    r = api.http.delete("/v1/clusters")
    assert _assert_json_4xx(r)["error"] == "method_not_allowed"
