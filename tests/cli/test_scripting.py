"""Scripting against the CLI: with `--json` every error is one JSON object on stdout and a
non-zero exit; messages name the real cause in decimal money; `create --json` and
`show --json` print the same `ray` block; help is whole at 80 columns."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from gpupool.cli.app import command
from gpupool.localnet import LocalNetwork
from gpupool.localnet.network import free_port
from tests.cli_run import gpupool


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    # one agent of CPU devices, no Ray: what these commands need, and quick to start
    with LocalNetwork(
        tmp_path_factory.mktemp("scripting"), agents=1, ray=False, challenge_size=128
    ) as network:
        yield network


def _env(net: LocalNetwork, key: str) -> dict[str, str]:
    return {"GPUPOOL_COORDINATOR": net.url, "GPUPOOL_KEY": key}


def _one_json_error(result: Any) -> dict[str, Any]:
    """The failure's JSON object: all of stdout, one line, with a code and a message."""
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    body: dict[str, Any] = json.loads(lines[0])
    assert body["error"] and body["message"]
    return body


def test_a_usage_error_with_json_is_one_json_object() -> None:
    result = gpupool("cluster", "create", "--devices", "0", "--max-price", "1", "--json")
    body = _one_json_error(result)
    assert result.returncode == 2 and body["error"] == "usage"
    assert "--devices" in body["message"]
    assert "status" not in body  # no coordinator answered


def test_an_unreachable_coordinator_with_json_is_one_json_object() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = gpupool("cluster", "list", "--json", "-c", url, env={"GPUPOOL_KEY": "gpr_x"})
    body = _one_json_error(result)
    assert result.returncode == 1 and body["error"] == "unreachable"
    assert "cannot reach the coordinator" in result.stderr  # people still read stderr


def test_a_gpu_booking_on_a_cpu_pool_names_the_kind(net: LocalNetwork) -> None:
    env = _env(net, net.create_renter("gpu-wanted"))
    args = ("cluster", "create", "--devices", "1", "--max-price", "5", "--kind", "gpu")
    body = _one_json_error(gpupool(*args, "--json", env=env))
    assert body["error"] == "insufficient_capacity" and body["status"] == 409
    assert set(body["excluded_by"]) == {"kind"}
    assert "of the other kind" in body["message"] and "stake" not in body["message"]
    human = gpupool(*args, env=env)
    assert human.returncode == 1 and human.stdout == ""
    assert "of the other kind" in human.stderr and "stake" not in human.stderr


def test_a_booking_short_of_money_says_decimal_amounts(net: LocalNetwork) -> None:
    env = _env(net, net.create_renter("poor", funds="0.01"))
    args = ("cluster", "create", "--devices", "1", "--max-price", "5", "--kind", "cpu")
    body = _one_json_error(gpupool(*args, "--hours", "3", "--json", env=env))
    assert body["error"] == "insufficient_funds" and body["status"] == 402
    assert "holds 0.01;" in body["message"] and "micro" not in body["message"]
    needed = body["needed_micros"]
    assert f"needs {needed // 1_000_000}." in body["message"]  # 3 h at the agent's price
    human = gpupool(*args, "--hours", "3", env=env)
    assert "micro" not in human.stderr and "holds 0.01;" in human.stderr


def test_proof_of_an_unknown_lease_names_the_lease(net: LocalNetwork) -> None:
    env = _env(net, net.create_renter("prover"))
    human = gpupool("proof", "show", "l-nope", env=env)
    assert human.returncode == 1 and "no lease l-nope" in human.stderr
    assert "c-nope" not in human.stderr
    body = _one_json_error(gpupool("proof", "show", "l-nope", "--json", env=env))
    assert body["status"] == 404 and body["message"] == "no lease l-nope"
    assert "no cluster c-nope" in gpupool("proof", "show", "c-nope", env=env).stderr


def test_workers_list_shows_price_model_and_stake(net: LocalNetwork) -> None:
    env = _env(net, net.create_renter("looker"))
    listed = gpupool("workers", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    devices = [d for w in json.loads(listed.stdout) for d in w["devices"]]
    assert devices and {d["stake"] for d in devices} == {"staked"}  # the network staked them
    table = gpupool("workers", "list", "--devices", env=env)
    assert table.returncode == 0, table.stderr
    for d in devices:
        assert d["id"] in table.stdout and d["model"] in table.stdout
        assert d["price_per_hour"] in table.stdout
    assert "staked" in table.stdout and "price/h" in table.stdout


def test_create_json_carries_the_ray_block_show_json_has(net: LocalNetwork) -> None:
    env = _env(net, net.create_renter("scripter"))
    created = gpupool(
        "cluster", "create", "-n", "1", "--max-price", "5", "--kind", "cpu", "--no-wait",
        "--json", env=env,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    booked = json.loads(created.stdout)
    assert "ray" in booked and booked["ray"].keys() >= {"nodes"}
    shown = json.loads(gpupool("cluster", "show", booked["id"], "--json", env=env).stdout)
    assert shown.keys() == booked.keys() and shown["ray"].keys() == booked["ray"].keys()
    gone = gpupool("cluster", "terminate", booked["id"], "--json", env=env)
    assert gone.returncode == 0, gone.stderr


def test_help_at_80_columns_shows_every_option_and_its_whole_help() -> None:
    shown = gpupool("cluster", "create", "--help", env={"COLUMNS": "80"})
    assert shown.returncode == 0, shown.stderr
    assert "…" not in shown.stdout
    assert max(len(line) for line in shown.stdout.splitlines()) <= 80
    words = " ".join(shown.stdout.split())
    create = command().commands["cluster"].commands["create"]
    for param in create.params:
        for name in param.opts + param.secondary_opts:
            assert name in shown.stdout.split() or f"{name}," in shown.stdout, name
        if param.help:
            # click may break a long word at a hyphen; every other word is whole
            assert " ".join(param.help.split()).replace("- ", "-") in words.replace("- ", "-")


def test_stake_add_all_tops_up_only_short_devices_and_needs_one_target(net: LocalNetwork) -> None:
    env = _env(net, net.supplier_keys[0])
    done = gpupool("stake", "add", "--all", "--json", env=env)
    assert done.returncode == 0 and json.loads(done.stdout) == []  # the network staked them
    said = gpupool("stake", "add", "--all", env=env)
    assert said.returncode == 0 and "fully staked" in said.stdout
    for wrong in ((), ("w-x:cpu0", "--all")):
        refused = gpupool("stake", "add", *wrong, "--json", env=env)
        assert refused.returncode == 2 and "name one device, or pass --all" in refused.stdout
