"""`gpupool balance` and `gpupool ledger` against a real coordinator process."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from gpupool.localnet import LocalNetwork
from tests.cli_run import gpupool


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    with LocalNetwork(tmp_path_factory.mktemp("ledger-cli"), agents=0) as network:
        yield network


def _env(net: LocalNetwork, key: str = "") -> dict[str, str]:
    return {"GPUPOOL_COORDINATOR": net.url, "GPUPOOL_KEY": key, "GPUPOOL_ADMIN_KEY": net.admin_key}


def test_faucet_balance_and_journal_through_the_cli(net: LocalNetwork) -> None:
    with net.admin() as admin:
        created = admin.create_account("renter", "cli")
    env = _env(net, created.api_key)
    funded = gpupool(
        "ledger", "fund", created.id, "12.5", "--idempotency-key", "cli-1", "--json", env=env
    )
    assert funded.returncode == 0, funded.stderr
    again = gpupool(
        "ledger", "fund", created.id, "12.5", "--idempotency-key", "cli-1", "--json", env=env
    )
    assert json.loads(again.stdout)["fresh"] is False

    balance = gpupool("balance", "--json", env=env)
    assert balance.returncode == 0, balance.stderr
    assert json.loads(balance.stdout)["available_micros"] == 12_500_000
    assert "available 12.50" in gpupool("balance", env=env).stdout

    shown = gpupool("ledger", "show", "--json", env=env)
    entries = json.loads(shown.stdout)
    assert [e["kind"] for e in entries] == ["fund"]
    assert "fund" in gpupool("ledger", "show", env=env).stdout

    audit = gpupool("ledger", "audit", "--json", env=env)
    assert audit.returncode == 0, audit.stderr
    assert json.loads(audit.stdout)["balanced"] is True


def test_the_faucet_refuses_a_bad_amount_and_needs_the_admin_key(net: LocalNetwork) -> None:
    with net.admin() as admin:
        created = admin.create_account("renter", "broke")
    env = _env(net, created.api_key)
    bad = gpupool("ledger", "fund", created.id, "0", env=env)
    assert bad.returncode == 1 and "422" in bad.stderr and "Traceback" not in bad.stderr
    nokey = gpupool("ledger", "fund", created.id, "3", env={**env, "GPUPOOL_ADMIN_KEY": ""})
    assert nokey.returncode == 2 and "admin key" in nokey.stderr


def test_validator_odds_prints_the_escape_chance() -> None:
    shown = gpupool("validator", "odds", "--p", "0.1", "--jobs", "20", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["escape_probability"] == pytest.approx(0.9**20)
    assert "0.121577" in gpupool("validator", "odds", "--p", "0.1", "--jobs", "20").stdout
    bad = gpupool("validator", "odds", "--p", "2", "--jobs", "20")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_validator_odds_counts_colluders_share_of_the_rerun_pool() -> None:
    args = ("validator", "odds", "--p", "0.1", "--jobs", "20", "--share", "0.25")
    shown = gpupool(*args, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["escape_probability"] == pytest.approx((1 - 0.075) ** 20)
    bad = gpupool("validator", "odds", "--p", "0.1", "--jobs", "20", "--share", "1.5")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_a_refused_payment_names_the_shortfall() -> None:
    from gpupool.cli.errors import human_message
    from gpupool.client import ApiError

    said = "renter:a-x holds 0.10; this needs 0.15 (short by 0.05)"
    body = {"error": "insufficient_funds", "message": said, "shortfall_micros": 50_000}
    message = human_message(ApiError(402, "insufficient_funds", said, body))
    assert "402 insufficient_funds" in message and "short by 0.05" in message
