"""Proof of Time-Lock with real processes: agents sampling real cgroups, the guard killing a
real foreign process, an agent away for 30 s, and the certificate re-verified offline by the
CLI, which fails when a byte changes."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpupool.client import Client
from gpupool.crypto.identity import load_or_create
from gpupool.localnet import LocalNetwork
from tests.cli_run import gpupool
from tests.integration.conftest import lease_cgroup, wait_state

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 30


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    # Heartbeats every 15 s: an agent away for 30 s is not yet down (three missed), so its
    # lease runs on and the outage shows only in the proof.
    network = LocalNetwork(
        tmp_path_factory.mktemp("potl"),
        agents=2,
        heartbeat_seconds=15.0,
        epoch_seconds=2.0,
        sample_interval=0.5,
    )
    with network:
        yield network


@pytest.fixture(scope="module")
def renter_key(net: LocalNetwork) -> str:
    return net.create_renter("potl")


@pytest.fixture(scope="module")
def gp(net: LocalNetwork, renter_key: str) -> Iterator[Client]:
    with Client(net.url, renter_key) as client:
        client.key = renter_key  # type: ignore[attr-defined]
        yield client


def _cli(net: LocalNetwork, gp: Client, *args: str) -> subprocess.CompletedProcess[str]:
    return gpupool(
        *args, env={"GPUPOOL_COORDINATOR": net.url, "GPUPOOL_KEY": getattr(gp, "key", "")}
    )


def _run_lease(gp: Client, seconds: float) -> Any:
    cluster = gp.create_cluster(devices=1, kind="cpu", hours=1, max_price_per_hour="1")
    cluster = wait_state(gp, cluster.id, "ready")
    time.sleep(seconds)
    return cluster


def _end(gp: Client, cluster_id: str) -> dict[str, Any]:
    gp.terminate(cluster_id)
    wait_state(gp, cluster_id, "ended")
    body: dict[str, Any] = gp.proof(cluster_id).body
    return body


def test_a_clean_lease_passes_and_its_export_verifies_offline_until_a_byte_changes(
    net: LocalNetwork, gp: Client, tmp_path: Path
) -> None:
    cluster = _run_lease(gp, 8)
    body = _end(gp, cluster.id)
    assert body["verdict"] == "pass", body["reasons"]
    assert body["coverage_ppm"] >= 990_000
    assert body["violations"] == 0

    shown = _cli(net, gp, "proof", "show", cluster.lease_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["body"]["verdict"] == "pass"
    folder = tmp_path / "proof"
    exported = _cli(net, gp, "proof", "export", cluster.lease_id, str(folder))
    assert exported.returncode == 0, exported.stderr
    verified = _cli(net, gp, "proof", "verify", str(folder), "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout.splitlines()[-1])["verified"] is True

    samples = folder / "samples.jsonl"
    text = samples.read_text()
    samples.write_text(text.replace('"owner":"lease"', '"owner":"system"', 1))
    tampered = _cli(net, gp, "proof", "verify", str(folder))
    assert tampered.returncode == 1
    assert "Traceback" not in tampered.stderr


def test_a_foreign_process_is_killed_and_recorded_and_the_lease_process_lives(
    net: LocalNetwork, gp: Client
) -> None:
    cluster = _run_lease(gp, 1)
    member = cluster.members[0]
    devices = {d.id: d for w in gp.workers() for d in w.devices}
    core = devices[member.device_id].cores[0]
    cgroup = lease_cgroup(member.worker_id, cluster.lease_id)
    if cgroup is None:
        pytest.skip("no cgroup v2 here")
    # the renter's own work, pinned to its core, inside the lease
    own = subprocess.Popen(
        ["/bin/sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && exec taskset -c {core} sleep 600']
    )
    foreign = subprocess.Popen(["taskset", "-c", str(core), "sleep", "600"])
    try:
        assert foreign.wait(timeout=10) == -signal.SIGKILL  # the guard's SIGKILL
        time.sleep(1.5)
        assert own.poll() is None  # never touched
        body = _end(gp, cluster.id)
    finally:
        for p in (own, foreign):
            if p.poll() is None:
                p.kill()
            p.wait()
    [device] = body["devices"]
    assert foreign.pid in [v["pid"] for v in device["violations"]]
    assert body["verdict"] in ("degraded", "fail")


def _agent_index(net: LocalNetwork, worker_id: str) -> int:
    for index in range(net.agents):
        identity, _ = load_or_create(net.agent_dir(index) / "identity.key")
        if identity.worker_id == worker_id:
            return index
    raise AssertionError(f"no agent has worker {worker_id}")


def test_an_agent_away_for_30_s_leaves_a_gap_and_its_chain_continues(
    net: LocalNetwork, gp: Client, tmp_path: Path
) -> None:
    cluster = _run_lease(gp, 3)
    index = _agent_index(net, cluster.members[0].worker_id)
    net.stop_agent(index, signal.SIGKILL)  # a crash: the lease keeps running without it
    time.sleep(OUTAGE_SECONDS)
    net.start_agent(index)
    net.wait_workers_up(net.agents)
    time.sleep(5)
    assert gp.cluster(cluster.id).state == "ready"
    body = _end(gp, cluster.id)

    [device] = body["devices"]
    uncovered_ms = (body["t_end_ms"] - body["t1_ms"]) - device["covered_ms"]
    print(f"uncovered after a {OUTAGE_SECONDS} s outage: {uncovered_ms / 1000:.1f} s")
    assert uncovered_ms >= (OUTAGE_SECONDS - 2) * 1000
    assert device["coverage_ppm"] < 1_000_000

    folder = tmp_path / "gap"
    assert _cli(net, gp, "proof", "export", cluster.lease_id, str(folder)).returncode == 0
    verified = _cli(net, gp, "proof", "verify", str(folder))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    times = [
        json.loads(line)["time_ms"] for line in (folder / "samples.jsonl").read_text().splitlines()
    ]
    seqs = [json.loads(line)["seq"] for line in (folder / "samples.jsonl").read_text().splitlines()]
    assert seqs == list(range(len(seqs)))  # one chain, no restart from zero
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) >= (OUTAGE_SECONDS - 2) * 1000
