"""The integration tier: a real coordinator process and real agent processes over loopback,
started by the product's own `LocalNetwork`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from gpupool.client import Client
from gpupool.localnet import LocalNetwork
from gpupool.wire.models import ClusterOut

T = TypeVar("T")

pytestmark = pytest.mark.integration


def eventually(check: Callable[[], T | None], timeout: float = 30.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value is not None and value is not False:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s: {what}")


def wait_state(gp: Client, cluster_id: str, state: str, timeout: float = 30) -> ClusterOut:
    def check() -> ClusterOut | None:
        cluster = gp.cluster(cluster_id)
        return cluster if cluster.state == state else None

    return eventually(check, timeout, f"{cluster_id} to be {state}")


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    with LocalNetwork(tmp_path_factory.mktemp("net"), agents=3, heartbeat_seconds=1.0) as net:
        yield net


@pytest.fixture(scope="module")
def renter(network: LocalNetwork) -> Iterator[Client]:
    key = network.create_renter("integration")
    with Client(network.url, key) as gp:
        yield gp


def lease_cgroup(worker_id: str, lease_id: str) -> Path | None:
    from gpupool.agent.sandbox.cgroup import find_cgroup2_root

    root = find_cgroup2_root()
    return root / f"gpupool-{worker_id}" / lease_id if root else None
