"""The agent's mesh manager where WireGuard cannot run: it says so once and leases go on
without it (Ray and others then bind to ordinary addresses)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gpupool.agent.link import CoordinatorLink
from gpupool.agent.mesh import manager as agent_mesh
from gpupool.agent.mesh.manager import MeshManager, local_address_towards
from gpupool.crypto.identity import Identity


def test_without_root_the_mesh_is_off_and_said_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(agent_mesh.os, "geteuid", lambda: 1000)
    identity = Identity.generate()
    link = CoordinatorLink("http://127.0.0.1:9", identity, "gps_x")
    manager = MeshManager(link, identity.worker_id, tmp_path, "http://127.0.0.1:9")
    with caplog.at_level(logging.WARNING, logger="gpupool.agent.mesh.manager"):
        for _ in range(3):
            manager.sync({"l-1"})
    said = [r for r in caplog.records if "mesh_unavailable" in r.getMessage()]
    assert len(said) == 1
    assert "root" in (manager.unavailable or "")
    assert manager.overlay_address("l-1") is None
    assert not (tmp_path / "wireguard.key").exists()  # no key made for nothing
    link.close()


def test_the_advertised_host_is_the_address_towards_the_coordinator() -> None:
    assert local_address_towards("http://127.0.0.1:8420") == "127.0.0.1"
