"""The command line: cheap to start, clear errors without tracebacks, and the demo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gpupool.localnet.network import free_port
from tests.cli_run import gpupool

HEAVY = (
    "ray",
    "pynvml",
    "sqlalchemy",
    "psycopg",
    "sqlite3",
    "uvicorn",
    "gpupool.coordinator",
    "gpupool.agent",
)


def test_help_imports_no_ray_nvml_or_database_driver() -> None:
    probe = (
        "import sys\n"
        "sys.argv = ['gpupool', '--help']\n"
        "from gpupool.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print('LOADED', [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert "LOADED []" in result.stdout, result.stdout
    assert "cluster" in result.stdout and "agent" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["cluster", "list"],
        ["workers", "list", "--json"],
        ["cluster", "create", "--devices", "2", "--max-price", "1"],
        ["cluster", "connect", "c-whatever", "--out", "/nonexistent/never-written.conf"],
        ["coordinator", "key"],
        ["coordinator", "pin", "--json"],
    ],
)
def test_unreachable_coordinator_is_one_clear_line(args: list[str]) -> None:
    result = gpupool(
        *args,
        "--coordinator",
        f"http://127.0.0.1:{free_port()}",
        env={"GPUPOOL_KEY": "gpr_whatever"},
    )
    assert result.returncode == 1
    assert "cannot reach the coordinator" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_missing_key_is_a_usage_error() -> None:
    result = gpupool("cluster", "list")
    assert result.returncode == 2
    assert "no API key" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_option_value_is_a_usage_error() -> None:
    result = gpupool("cluster", "create", "--devices", "0", "--max-price", "1")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_agent_refuses_a_bad_price() -> None:
    result = gpupool("agent", "run", "--key", "k", "--cpu-price", "cheap")
    assert result.returncode == 2
    assert "not an amount" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.integration
def test_demo_ends_its_lease_and_prints_json_last(tmp_path: object) -> None:
    result = gpupool("demo", "--json", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["lease_state"] == "ended"
    assert summary["workers"] == 3
    assert len(summary["devices"]) == 2
    assert summary["cluster_id"].startswith("c-")
    assert "no GPU" in summary["note"]
    ray = summary["ray"]  # the distributed Ray job on the booked members
    assert ray["job_status"] == "SUCCEEDED"
    assert ray["nodes"] == 2 and ray["trial_nodes"] == 2  # one node per member, both worked
    assert ray["trials"] == 24
    assert ray["mesh"] is False  # the demo's agents run without root's mesh, and say so
    assert "without the mesh" in result.stderr
    assert 20.0 < ray["best_rmse_ms"] < 80.0  # RTT from distance on real data, in ms
    ledger = summary["ledger"]
    assert ledger["balanced"] is True and ledger["chain_ok"] is True
    assert ledger["renter_paid_micros"] > 0
    assert ledger["renter_paid_micros"] == ledger["earned_micros"] + ledger["refunded_micros"]
    assert sum(ledger["suppliers_earned_micros"].values()) == ledger["earned_micros"]
