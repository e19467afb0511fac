"""The mesh tier: real wireguard-go between network namespaces (gpupool.testing.netns).

Skips, saying why, where namespaces cannot be made (not root, no `ip netns`) or the
WireGuard tools are missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence

import pytest

from gpupool.testing.netns import TestNetwork

pytestmark = pytest.mark.integration


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "mesh tests need root (network namespaces, WireGuard interfaces)"
    for tool, package in (("ip", "iproute2"), ("wg", "wireguard-tools"),
                          ("iptables", "iptables"), ("ping", "iputils-ping")):  # fmt: skip
        if shutil.which(tool) is None:
            return f"{tool} is missing: apt-get install {package} (scripts/bootstrap.sh does)"
    name = f"gpt{os.urandom(3).hex()}-probe"
    made = subprocess.run(["ip", "netns", "add", name], check=False, capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` does not work here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
    return None


@pytest.fixture(scope="session")
def netns_usable() -> None:
    reason = _why_not()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def test_network(netns_usable: None) -> Iterator[Callable[[Sequence[str]], TestNetwork]]:
    """A factory of TestNetworks; every network made is closed when the test ends."""
    made: list[TestNetwork] = []

    def make(hosts: Sequence[str]) -> TestNetwork:
        net = TestNetwork(hosts).__enter__()
        made.append(net)
        return net

    try:
        yield make
    finally:
        for net in made:
            net.close()
