"""The API tier: the real FastAPI app in-process, on a real database, with a manual clock.

Agents are played by the product's own signed link (`CoordinatorLink`) over the app's test
client, so the tests exercise the real signing code.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from starlette.types import ASGIApp

from gpupool.agent.link import CoordinatorLink
from gpupool.coordinator.api.app import create_app
from gpupool.coordinator.api.deps import Services
from gpupool.coordinator.settings import CoordinatorSettings
from gpupool.coordinator.storage.database import SqlDatabase
from gpupool.crypto.identity import Identity
from gpupool.testing import ManualClock

ADMIN_KEY = "gpa_test-admin-key"
HOUR = 100.0
RENTER_FUNDS = "1000"
SUPPLIER_FUNDS = "1000"


@dataclass
class Api:
    http: TestClient
    clock: ManualClock
    services: Services
    db: SqlDatabase

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_KEY}"}

    def account(self, role: str, name: str = "someone", funds: str | None = RENTER_FUNDS) -> str:
        """A new account's API key; renters start with `funds` from the faucet."""
        r = self.http.post(
            "/v1/accounts", json={"role": role, "name": name}, headers=self.admin_headers()
        )
        assert r.status_code == 201, r.text
        key: str = r.json()["api_key"]
        if role == "renter" and funds is not None:
            self.fund(r.json()["id"], funds)
        return key

    def fund(self, account_id: str, amount: str) -> Any:
        r = self.http.post(
            "/v1/ledger/fund",
            json={"account_id": account_id, "amount": amount},
            headers=self.admin_headers(),
        )
        assert r.status_code == 201, r.text
        return r.json()

    def as_key(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def agent(self, supplier_key: str, identity: Identity | None = None) -> AgentSim:
        identity = identity or Identity.generate()
        link = CoordinatorLink(
            "http://testserver", identity, supplier_key, clock=self.clock.now, http=self.http
        )
        return AgentSim(self, identity, link, supplier_key)

    def book(self, renter_key: str, **fields: Any) -> Any:
        body = {"devices": 1, "kind": "cpu", "hours": 1, "max_price_per_hour": "1", **fields}
        return self.http.post("/v1/clusters", json=body, headers=self.as_key(renter_key))

    def tick(self) -> None:
        from gpupool.coordinator.api.app import tick

        tick(self.services)


@dataclass
class AgentSim:
    """A worker driven step by step by the test through the real signed link."""

    api: Api
    identity: Identity
    link: CoordinatorLink
    supplier_key: str = ""
    solve_challenges: bool = True
    stake: bool = True

    @property
    def worker_id(self) -> str:
        return self.identity.worker_id

    def register(
        self,
        devices: int = 2,
        price: str = "0.10",
        region: str = "eu-west",
        model: str = "Test CPU",
        **extra: Any,
    ) -> Any:
        cpus = [
            {
                "local_name": f"cpu{i}",
                "kind": "cpu",
                "model": model,
                "memory_mb": 1024,
                "price_per_hour": price,
                "cores": [i],
            }
            for i in range(devices)
        ]
        return self._register(cpus, region, **extra)

    def register_gpus(
        self,
        devices: int = 1,
        price: str = "2.00",
        model: str = "NVIDIA H100 80GB HBM3",
        memory_mb: int = 81_559,
    ) -> Any:
        """Claim `devices` GPUs of `model` (there are none here: what the agent says)."""
        gpus = [
            {
                "local_name": f"gpu{i}",
                "kind": "gpu",
                "model": model,
                "memory_mb": memory_mb,
                "price_per_hour": price,
                "uuid": f"GPU-00000000-0000-0000-0000-{i:012d}",
            }
            for i in range(devices)
        ]
        return self._register(gpus, "eu-west")

    def _register(self, devices: list[dict[str, Any]], region: str, **extra: Any) -> Any:
        from gpupool.wire.models import WorkerRegister

        body = {
            "public_key": self.identity.public_key_b64,
            "hostname": "host-" + self.worker_id[-4:],
            "location": {"latitude": 50.1, "longitude": 8.7, "region": region},
            "devices": devices,
            "agent_version": "test",
            "sandbox": "cgroup2",
            **extra,
        }
        worker = self.link.register(WorkerRegister.model_validate(body))
        if self.stake:  # before the challenge: only staked devices are challenged
            self.stake_devices(worker.devices)
        return worker

    def stake_devices(self, devices: list[Any]) -> None:
        """Fund the supplier through the faucet and stake each device (the pool's entry)."""
        # the link holds the supplier's key when a test built this sim by hand
        self.supplier_key = self.supplier_key or self.link._supplier_key
        me = self.api.http.get("/v1/accounts/me", headers=self.api.as_key(self.supplier_key))
        self.api.fund(me.json()["id"], SUPPLIER_FUNDS)
        for d in devices:
            r = self.api.http.post(
                f"/v1/stakes/{d.id}", json={}, headers=self.api.as_key(self.supplier_key)
            )
            assert r.status_code == 201, r.text
        if self.solve_challenges:  # staking issued each device its first challenge
            self.solve_pending()

    def solve_pending(self) -> list[Any]:
        """Answer every open capability challenge with the agent's real challenge code."""
        from gpupool.agent.proof.challenger import Challenger

        challenger = Challenger(self.link)
        return [challenger.solve(c) for c in self.link.heartbeat().challenges]

    def submit(
        self, challenge_id: str, work: Any, compute_seconds: float = 1e-6, between: Any = None
    ) -> Any:
        """Commit `work`'s root, send the memory sketch when the coordinator asks for one,
        open the rows: the protocol's three steps, for tests that compute (or forge) the
        work themselves. `between()` runs after the commitment, e.g. to move the clock."""
        from gpupool.agent.proof.challenge import open_rows

        answer = self.link.challenge_answer(challenge_id, work.root, compute_seconds)
        if between is not None:
            between()
        rows = answer.rows
        if answer.memory is not None:
            rows = self.link.challenge_sketch(
                challenge_id, work.sketch(int(answer.memory.seed, 16))
            )
        return self.link.challenge_open(challenge_id, open_rows(work, rows))

    def device(self, i: int) -> str:
        return f"{self.worker_id}:cpu{i}"


@pytest.fixture
def api(database: SqlDatabase) -> Iterator[Api]:
    with running_api(database) as running:
        yield running


@contextmanager
def running_api(database: SqlDatabase) -> Iterator[Api]:
    """The app in-process on `database` with a manual clock and no ticker."""
    clock = ManualClock()
    settings = CoordinatorSettings(
        db_url=database.url,
        admin_key=ADMIN_KEY,
        heartbeat_seconds=10,
        hour_seconds=HOUR,
        provision_deadline_seconds=60,
        max_body_bytes=64 * 1024,
        challenge_size=64,
        challenge_rows=4,
    )
    app = create_app(settings, database, clock=clock, run_ticker=False)
    with TestClient(app, raise_server_exceptions=False) as http:
        yield Api(http, clock, app.state.services, database)


@contextlib.contextmanager
def live_server(app: ASGIApp, lifespan: str = "on") -> Iterator[str]:
    """Serve `app` on a real loopback socket (for clients in other processes, and bodies
    that arrive in pieces, as over a network); yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started and thread.is_alive():
            threading.Event().wait(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
