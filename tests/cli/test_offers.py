"""`gpupool offers` and `cluster create --dry-run` against a real coordinator and agent: what
the dry run shows is what the booking then gets, at the same price, and it books nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from gpupool.localnet import LocalNetwork
from tests.cli_run import gpupool


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    with LocalNetwork(
        tmp_path_factory.mktemp("offers"), agents=1, ray=False, challenge_size=128
    ) as network:
        yield network


def _json(*args: str, env: dict[str, str]) -> Any:
    done = gpupool(*args, "--json", env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout)


def test_the_dry_run_shows_what_the_booking_gets_and_books_nothing(net: LocalNetwork) -> None:
    env = {"GPUPOOL_COORDINATOR": net.url, "GPUPOOL_KEY": net.create_renter("shopper")}
    offered = _json("offers", "--kind", "cpu", env=env)
    assert offered and all(o["kind"] == "cpu" for o in offered)
    before = sum(o["count"] for o in offered)
    assert _json("offers", "--kind", "gpu", env=env) == []  # a CPU-only pool

    booking = ("cluster", "create", "-n", "1", "--kind", "cpu", "--max-price", "5", "--hours", "2")
    quote = _json(*booking, "--dry-run", env=env)
    assert len(quote["devices"]) == 1 and quote["affordable"] is True
    assert Decimal(quote["total_price"]) == 2 * Decimal(quote["price_per_hour"])
    assert quote["devices"][0]["price_per_hour"] == offered[0]["price_per_hour"]  # cheapest
    assert _json("cluster", "list", env=env) == []
    human = gpupool(*booking, "--dry-run", env=env)
    assert human.returncode == 0 and "nothing booked" in human.stdout
    assert quote["devices"][0]["device_id"] in human.stdout

    cluster = _json(*booking, "--no-wait", env=env)
    assert [m["device_id"] for m in cluster["members"]] == [quote["devices"][0]["device_id"]]
    assert (cluster["price_per_hour"], cluster["total_price"]) == (
        quote["price_per_hour"],
        quote["total_price"],
    )
    assert sum(o["count"] for o in _json("offers", "--kind", "cpu", env=env)) == before - 1
    gpupool("cluster", "terminate", cluster["id"], env=env)


def test_a_dry_run_too_big_fails_as_the_booking_would(net: LocalNetwork) -> None:
    env = {"GPUPOOL_COORDINATOR": net.url, "GPUPOOL_KEY": net.create_renter("greedy")}
    done = gpupool(
        "cluster",
        "create",
        "-n",
        "99",
        "--kind",
        "cpu",
        "--max-price",
        "5",
        "--dry-run",
        "--json",
        env=env,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    body = json.loads(done.stdout)
    assert body["status"] == 409 and "requested 99 devices" in body["message"]


def test_offers_refuse_a_bad_kind_with_a_usage_error() -> None:
    done = gpupool("offers", "--kind", "tpu")
    assert done.returncode == 2 and "Traceback" not in done.stderr and "tpu" in done.stderr
