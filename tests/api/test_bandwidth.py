"""Bandwidth measurement against the coordinator: the signed routes, what cannot be timed,
and a real measurement over a real socket that sets the connectivity tier bookings use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gpupool.agent.link import CoordinatorLink, LinkError
from gpupool.agent.mesh.bandwidth import BandwidthError, BandwidthMeter
from gpupool.coordinator.api.app import create_app
from gpupool.coordinator.settings import CoordinatorSettings
from gpupool.coordinator.storage.database import SqlDatabase
from gpupool.domain.connectivity import MAX_PROBE_BYTES, MIN_PROBE_BYTES, connectivity_tier
from gpupool.testing import ManualClock
from tests.api.conftest import ADMIN_KEY, AgentSim, Api, live_server


@pytest.fixture
def agent(api: Api) -> AgentSim:
    sim = api.agent(api.account("supplier", "s"))
    sim.register(devices=1)
    return sim


def _tier(api: Api, worker_id: str) -> tuple[float | None, float | None, int]:
    r = api.http.get("/v1/workers", headers=api.admin_headers())
    (w,) = [w for w in r.json() if w["id"] == worker_id]
    return w["upload_mbps"], w["download_mbps"], w["connectivity_tier"]


def test_the_download_payload_goes_only_to_signed_workers(api: Api, agent: AgentSim) -> None:
    assert api.http.get(f"/v1/agent/bandwidth?bytes={MIN_PROBE_BYTES}").status_code == 401
    timed, seconds = agent.link.bandwidth_download(MIN_PROBE_BYTES)
    assert 0 <= timed <= MIN_PROBE_BYTES and seconds >= 0
    for size in (MIN_PROBE_BYTES - 1, MAX_PROBE_BYTES + 1):
        with pytest.raises(LinkError) as err:
            agent.link.bandwidth_download(size)
        assert err.value.status == 422


def test_an_upload_that_cannot_be_timed_asks_for_more_and_stores_nothing(
    api: Api, agent: AgentSim
) -> None:
    # The in-process test client hands the app each body in one piece: nothing to time.
    answer = agent.link.bandwidth_upload(b"x" * MIN_PROBE_BYTES, 50.0)
    assert not answer.stored and answer.next_bytes == MIN_PROBE_BYTES * 8
    with pytest.raises(LinkError) as err:
        agent.link.bandwidth_upload(b"x" * MAX_PROBE_BYTES, 50.0)
    assert err.value.status == 422 and "cannot be timed" in err.value.message
    with pytest.raises((LinkError, BandwidthError)):
        BandwidthMeter(agent.link).measure()
    assert _tier(api, agent.worker_id) == (None, None, 0)


def test_bad_uploads_are_refused(api: Api, agent: AgentSim) -> None:
    with pytest.raises(LinkError) as err:
        agent.link.bandwidth_upload(b"x" * (MIN_PROBE_BYTES - 1), 50.0)
    assert err.value.status == 422
    with pytest.raises(LinkError) as err:
        agent.link.bandwidth_upload(b"x" * MIN_PROBE_BYTES, 0.0)  # download rate must be > 0
    assert err.value.status == 422
    r = api.http.post(
        "/v1/agent/bandwidth?download_mbps=5",
        content=b"x" * (MAX_PROBE_BYTES + 1),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"
    r = api.http.post("/v1/agent/bandwidth?download_mbps=5", content=b"x" * MIN_PROBE_BYTES)
    assert r.status_code == 401  # unsigned


@pytest.fixture
def live(database: SqlDatabase) -> Iterator[tuple[str, ManualClock]]:
    """The coordinator on a real socket: bodies arrive in pieces, as over a network."""
    clock = ManualClock()
    settings = CoordinatorSettings(
        db_url=database.url, admin_key=ADMIN_KEY, challenge_size=64, challenge_rows=4
    )
    app = create_app(settings, database, clock=clock, run_ticker=False)
    with live_server(app) as url:
        yield url, clock


def test_a_real_measurement_sets_the_tier_that_bookings_filter_on(
    live: tuple[str, ManualClock], database: SqlDatabase
) -> None:
    import httpx

    from gpupool.crypto.identity import Identity
    from tests.api.conftest import Api as ApiHelpers

    url, clock = live
    with httpx.Client(base_url=url, timeout=30) as http:
        api = ApiHelpers(http, clock, None, database)  # type: ignore[arg-type]
        sim = AgentSim(
            api,
            (ident := Identity.generate()),
            link := CoordinatorLink(url, ident, api.account("supplier", "s"), clock=clock.now),
        )
        sim.register(devices=2)
        answer = BandwidthMeter(link).measure()
        assert answer.stored and answer.upload_mbps and answer.download_mbps
        tier = connectivity_tier(answer.upload_mbps, answer.download_mbps)
        assert answer.connectivity_tier == tier >= 1  # loopback moves far more than 10 Mbit/s
        assert _tier(api, sim.worker_id) == (answer.upload_mbps, answer.download_mbps, tier)

        renter = api.account("renter", "r")
        assert api.book(renter, devices=1, min_connectivity_tier=tier).status_code == 201
        if tier < 4:
            r = api.book(renter, devices=1, min_connectivity_tier=tier + 1)
            assert r.status_code == 409 and "connectivity_tier" in r.text
        link.close()
