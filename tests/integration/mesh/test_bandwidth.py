"""Bandwidth measured across a real, rate-limited link between network namespaces: the
worker's upload is held to 20 Mbit/s by tc tbf, the coordinator times it, and the worker's
connectivity tier follows."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from gpupool.testing.netns import TestNetwork

# Runs inside the agent's namespace: a supplier account, a registered worker, one
# measurement through the product's own meter; prints the coordinator's answer.
AGENT_SCRIPT = """
import json, sys
from gpupool.agent.mesh.bandwidth import BandwidthMeter
from gpupool.agent.link import CoordinatorLink
from gpupool.client import Client
from gpupool.crypto.identity import Identity
from gpupool.wire.models import WorkerRegister

url, admin = sys.argv[1], open(sys.argv[2]).read().strip()
with Client(url, admin) as c:
    key = c.create_account("supplier", "bandwidth").api_key
identity = Identity.generate()
link = CoordinatorLink(url, identity, key)
link.register(WorkerRegister.model_validate({
    "public_key": identity.public_key_b64, "hostname": "a",
    "location": {"latitude": 0, "longitude": 0, "region": "lab"},
    "devices": [{"local_name": "cpu0", "kind": "cpu", "model": "CPU", "memory_mb": 1024,
                 "price_per_hour": "0.1", "cores": [0]}],
    "agent_version": "test", "sandbox": "none"}))
print(json.dumps(BandwidthMeter(link).measure().model_dump()))
"""


def test_a_rate_limited_upload_is_measured_and_tiered(
    test_network: Callable[[Sequence[str]], TestNetwork], tmp_path: Path
) -> None:
    net = test_network(["coord", "a"])
    coord, agent = net.host("coord"), net.host("a")
    url = f"http://{coord.address}:8420"
    gpupool = str(Path(sys.executable).with_name("gpupool"))
    coord.spawn(gpupool, "coordinator", "serve", "--listen", f"{coord.address}:8420",
                "--state-dir", str(tmp_path / "coord"))  # fmt: skip
    probe = [sys.executable, "-c", f"import httpx; httpx.get('{url}/v1/health').raise_for_status()"]
    deadline = time.monotonic() + 60
    while True:
        try:
            agent.run(*probe, timeout=10)
            break
        except RuntimeError:
            assert time.monotonic() < deadline, "the coordinator did not start"
            time.sleep(0.3)
    net.rate_limit("a", "20mbit")
    script = tmp_path / "measure.py"
    script.write_text(AGENT_SCRIPT)
    out = agent.run(sys.executable, str(script), url, str(tmp_path / "coord" / "admin.key"),
                    timeout=120)  # fmt: skip
    m = json.loads(out.strip().splitlines()[-1])
    print(f"\nupload {m['upload_mbps']:.1f} Mbit/s, download {m['download_mbps']:.1f} Mbit/s")
    assert m["stored"]
    assert 12 <= m["upload_mbps"] <= 24  # the tbf rate, timed by the coordinator
    assert m["download_mbps"] > 2 * m["upload_mbps"]  # nothing limits the way down
    assert m["connectivity_tier"] == 1  # 10 to 100 Mbit/s in the slower direction
