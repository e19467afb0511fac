"""End to end with real processes: booking, ready, extend, terminate, expiry at T2, agent
restarts, workers going down, and no secret in any log."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from gpupool.client import ApiError, Client
from gpupool.localnet import LocalNetwork
from tests.integration.conftest import eventually, lease_cgroup, wait_state

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _workers_by_id(network: LocalNetwork) -> dict[str, str]:
    with network.admin() as admin:
        return {w.id: w.status for w in admin.workers()}


def test_booked_cluster_becomes_ready_and_terminating_kills_everything_of_the_lease(
    network: LocalNetwork, renter: Client
) -> None:
    started = time.monotonic()
    cluster = renter.create_cluster(devices=2, kind="cpu", hours=1, max_price_per_hour="1")
    cluster = wait_state(renter, cluster.id, "ready")
    print(f"booking to ready: {time.monotonic() - started:.2f} s")
    assert {m.state for m in cluster.members} == {"ready"}

    # The renter's work runs in the lease sandbox: put a double-forking workload there.
    workloads = []
    for worker_id in {m.worker_id for m in cluster.members}:
        cgroup = lease_cgroup(worker_id, cluster.lease_id)
        if cgroup is None:
            pytest.skip("no cgroup v2 on this machine")
        assert cgroup.is_dir()
        proc = subprocess.Popen(
            [
                "/bin/sh",
                "-c",
                f"echo $$ > {cgroup}/cgroup.procs && exec /bin/sh -c "
                f'"setsid sleep 600 & exec sleep 600"',
            ],
        )
        workloads.append((proc, cgroup))
    eventually(
        lambda: all(len((c / "cgroup.procs").read_text().split()) >= 3 for _, c in workloads),
        5,
        "workloads inside the lease cgroups",
    )
    pids = [int(p) for _, c in workloads for p in (c / "cgroup.procs").read_text().split()]

    renter.terminate(cluster.id)
    ended = wait_state(renter, cluster.id, "ended")
    assert {m.state for m in ended.members} == {"released"}
    for proc, _ in workloads:
        proc.wait(timeout=5)
    assert not any(_alive(p) for p in pids), "a process of the lease survived its end"
    assert not any(c.exists() for _, c in workloads), "a lease cgroup survived its end"
    with network.admin() as admin:
        statuses = {d.id: d.status for w in admin.workers() for d in w.devices}
    assert all(statuses[m.device_id] == "idle" for m in ended.members)


def test_extend_moves_t2_of_a_running_cluster(network: LocalNetwork, renter: Client) -> None:
    cluster = renter.create_cluster(devices=1, kind="cpu", hours=1, max_price_per_hour="1")
    wait_state(renter, cluster.id, "ready")
    extended = renter.extend(cluster.id, 2)
    assert (extended.t2 - cluster.t2).total_seconds() == pytest.approx(2 * 3600)
    assert extended.hours == 3
    assert renter.cluster(cluster.id).state == "ready"
    renter.terminate(cluster.id)
    wait_state(renter, cluster.id, "ended")


def test_too_few_devices_is_refused_with_what_was_missing(
    network: LocalNetwork, renter: Client
) -> None:
    with pytest.raises(ApiError) as exc:
        renter.create_cluster(devices=50, kind="cpu", hours=1, max_price_per_hour="1")
    assert exc.value.status == 409
    assert exc.value.body["requested"] == 50


def test_agent_restart_keeps_identity_worker_id_and_running_lease(
    network: LocalNetwork, renter: Client
) -> None:
    # Every device, so that each agent holds part of the lease.
    total = sum(len(w.devices) for w in network.admin().workers())
    cluster = renter.create_cluster(devices=total, kind="cpu", hours=1, max_price_per_hour="1")
    wait_state(renter, cluster.id, "ready")
    key_file = network.agent_dir(0) / "identity.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key_before = key_file.read_bytes()
    before = set(_workers_by_id(network))

    network.stop_agent(0, signal.SIGKILL)  # a crash: nothing is torn down
    network.start_agent(0)
    network.wait_workers_up(3)
    assert key_file.read_bytes() == key_before
    assert set(_workers_by_id(network)) == before  # same worker ids, no new worker
    time.sleep(1.5)
    assert renter.cluster(cluster.id).state == "ready"  # the restarted agent adopted it

    renter.terminate(cluster.id)
    ended = wait_state(renter, cluster.id, "ended")
    for worker_id in {m.worker_id for m in ended.members}:
        cgroup = lease_cgroup(worker_id, cluster.lease_id)
        assert cgroup is None or not cgroup.exists()


def test_worker_that_stops_heartbeating_goes_down_and_comes_back(
    network: LocalNetwork, renter: Client
) -> None:
    victim = network.agent_dir(2)
    worker_id = next(w.id for w in network.admin().workers() if w.region == "us-east")
    assert victim.exists()
    pid = network.agent_pid(2)
    os.kill(pid, signal.SIGSTOP)  # alive but silent
    try:
        eventually(
            lambda: _workers_by_id(network)[worker_id] == "down",
            15,
            "the silent worker to be marked down",
        )
        with network.admin() as admin:
            devices = next(w.devices for w in admin.workers() if w.id == worker_id)
        assert {d.status for d in devices} == {"down"}
    finally:
        os.kill(pid, signal.SIGCONT)
    eventually(lambda: _workers_by_id(network)[worker_id] == "up", 15, "the worker back up")


def test_lease_ends_by_itself_at_t2(tmp_path: Path) -> None:
    # Without Ray: its start-up on a busy machine can outlast a 3 s "hour".
    with LocalNetwork(
        tmp_path, agents=1, hour_seconds=3.0, heartbeat_seconds=1.0, ray=False
    ) as net:
        key = net.create_renter("short")
        with Client(net.url, key) as gp:
            cluster = gp.create_cluster(devices=1, kind="cpu", hours=1, max_price_per_hour="1")
            wait_state(gp, cluster.id, "ready")
            ended = wait_state(gp, cluster.id, "ended", timeout=20)
    notes = [e.note for e in ended.events]
    assert "T2 reached" in notes
    assert ended.events[-1].at >= cluster.t2


def test_no_key_ever_appears_in_a_log(network: LocalNetwork, renter: Client) -> None:
    secrets = [network.admin_key, *network.supplier_keys]
    logs = list(network.log_dir.glob("*.log"))
    assert len(logs) >= 4
    for log in logs:
        text = log.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"a key appears in {log.name}"
    # nor on any agent's command line, where other users could read it
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        assert not any(s in cmdline for s in secrets)
