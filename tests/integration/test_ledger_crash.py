"""A coordinator process killed with SIGKILL in the middle of a settlement (after the
payout was written, or after the slashes too, before the commit) leaves the ledger as it
was before the settlement; settling again then completes it once. Never half."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpupool.coordinator.storage.database import SqlDatabase
from gpupool.domain.ledger import settle_key
from gpupool.domain.models import Role
from gpupool.services.ledger import Ledger
from gpupool.services.ports import SystemClock
from tests.ledger_world import HOUR, UNIT, make_world

pytestmark = pytest.mark.integration
CHILD = "tests.integration.ledger_crash_child"


def _snapshot(db: SqlDatabase) -> tuple[int, dict[str, int]]:
    with db.transaction() as tx:
        return len(tx.ledger.entries()), tx.ledger.balances_like("")


def _child(url: str, lease_id: str, marker: Path, point: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.ledger_crash_child",
            url,
            lease_id,
            str(marker),
            point,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )


@pytest.mark.parametrize("point", ["settle:paid", "settle:slashed"])
def test_a_kill_9_mid_settlement_leaves_the_ledger_before_it(
    database: SqlDatabase, tmp_path: Path, point: str
) -> None:
    world = make_world(database)
    supplier = world.account(Role.SUPPLIER, "s")
    world.worker(supplier, [UNIT // 10, UNIT // 5])
    renter = world.account(Role.RENTER, "r")
    world.ledger.fund(renter.id, 10 * UNIT)
    view = world.book(renter, 2, 3)
    world.market.terminate(renter, view.cluster.id)
    devices = [m.device_id for m in view.members]
    world.certify(
        view.lease.id,
        {devices[0]: 900_000, devices[1]: 400_000},
        ran_ms=round(2 * HOUR * 1000),
        violations={devices[1]: 2},  # the settlement slashes too
    )
    before = _snapshot(database)
    url = database.url
    database.close()  # the child is the only process using the database now

    marker = tmp_path / "marker"
    child = _child(url, view.lease.id, marker, point)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        assert time.monotonic() < deadline, "the child never reached the hook point"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL

    reopened = SqlDatabase(url)  # as a restarted coordinator would
    try:
        assert _snapshot(reopened) == before  # not one posting of the settlement
        with reopened.transaction() as tx:
            assert tx.ledger.entry(settle_key(view.lease.id)) is None
        again = _child(url, view.lease.id, tmp_path / "unused", "-")
        out, err = again.communicate(timeout=60)
        assert again.returncode == 0, err
        assert out.split()[1] == "True"  # settled now, for the first time
        count, balances = _snapshot(reopened)
        assert count > before[0] and balances != before[1]
        with reopened.transaction() as tx:
            assert tx.ledger.entry(settle_key(view.lease.id)) is not None
            assert not any(tx.ledger.balances_like(f"escrow:{view.lease.id}/").values())
        assert Ledger(reopened, SystemClock()).audit().ok
    finally:
        reopened.close()
