"""The Ray node's address: the lease's overlay address once its mesh is up, else ordinary."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import pytest

from gpupool.agent.ray import node as raynode
from gpupool.agent.ray.node import LeaseNode, RayNodes
from gpupool.agent.sandbox.scratch import Scratch
from gpupool.domain.ray import RayRole


def _node(tmp_path: Path) -> LeaseNode:
    return LeaseNode(
        lease_id="l-1", role=RayRole.WORKER, address="", mesh=False, temp_dir=tmp_path,
        scratch=Scratch.at(tmp_path), local_devices=["w:cpu0"], lease_devices=["w:cpu0"],
        sandbox=cast(Any, None),
    )  # fmt: skip


def _nodes(tmp_path: Path) -> RayNodes:
    return RayNodes(cast(Any, None), tmp_path, [], "w", lambda: "192.0.2.7")


def test_without_a_mesh_the_node_binds_to_the_ordinary_address(tmp_path: Path) -> None:
    assert _nodes(tmp_path)._bind_address(_node(tmp_path)) == ("192.0.2.7", False)


def test_the_node_waits_for_the_lease_mesh_and_binds_to_its_overlay_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(raynode, "POLL_SECONDS", 0.01)
    answers = iter([None, None, "100.64.0.9"])
    nodes = _nodes(tmp_path)
    nodes.overlay_address = lambda lease_id: next(answers)
    assert nodes._bind_address(_node(tmp_path)) == ("100.64.0.9", True)


def test_a_mesh_that_never_comes_up_falls_back_to_the_ordinary_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(raynode, "POLL_SECONDS", 0.01)
    monkeypatch.setattr(raynode, "MESH_WAIT_SECONDS", 0.05)
    nodes = _nodes(tmp_path)
    nodes.overlay_address = lambda lease_id: None
    assert nodes._bind_address(_node(tmp_path)) == ("192.0.2.7", False)


def test_a_mesh_known_to_be_off_is_not_waited_for(tmp_path: Path) -> None:
    nodes = _nodes(tmp_path)
    nodes.overlay_address = lambda lease_id: None
    nodes.mesh_unavailable = lambda: True  # MESH_WAIT_SECONDS (20 s) would fail the test run
    assert nodes._bind_address(_node(tmp_path)) == ("192.0.2.7", False)


def test_the_start_log_is_read_without_following_a_link_the_lease_planted(tmp_path: Path) -> None:
    from gpupool.agent.ray.node import RayStartError, _read_no_follow

    secret = tmp_path / "root-only"
    secret.write_text("the agent's secret")
    log = tmp_path / "ray-start.log"
    log.symlink_to(secret)  # what a hostile lease could leave in its own folder
    with pytest.raises(OSError):
        _read_no_follow(log)
    fifo = tmp_path / "ray-start.rc"
    os.mkfifo(fifo)
    with pytest.raises(RayStartError, match="not a regular file"):
        _read_no_follow(fifo)
    plain = tmp_path / "plain.log"
    plain.write_text("x" * 10 + "tail")
    assert _read_no_follow(plain, limit=4) == "tail"
