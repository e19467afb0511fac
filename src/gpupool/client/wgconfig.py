"""A renter machine's WireGuard configuration for one cluster's mesh (wg-quick format).

`gpupool cluster connect` makes a key pair on the renter's machine, sends the coordinator
only the public key, and writes what comes back as a wg-quick file (mode 0600: it holds the
private key) or brings it up with `wg-quick up`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from gpupool.crypto.wgkeys import KeyPair
from gpupool.wire.mesh import MeshMapOut

KEEPALIVE = 25  # seconds: the client only dials out; this keeps its NAT mapping open
# wg-quick names the interface after the file: at most 15 of these characters
_NAME = re.compile(r"[a-zA-Z0-9_=+.-]{1,15}")


def default_name(cluster_id: str) -> str:
    return "gpc" + cluster_id.removeprefix("c-")[:12]


def render(peer_map: MeshMapOut, key: KeyPair) -> str:
    lines = [
        f"# gpupool mesh of cluster peers {', '.join(p.worker_id for p in peer_map.peers)}",
        "[Interface]",
        f"PrivateKey = {key.private_key}",
        f"Address = {peer_map.address}/32, {peer_map.direct_address}/128",
    ]
    for peer in peer_map.peers:
        lines += ["", "[Peer]", f"# {peer.worker_id}", f"PublicKey = {peer.public_key}"]
        if peer.endpoint:
            lines.append(f"Endpoint = {peer.endpoint}")
        lines.append(f"AllowedIPs = {', '.join(peer.allowed_ips)}")
        lines.append(f"PersistentKeepalive = {KEEPALIVE}")
    return "\n".join(lines) + "\n"


def write_config(path: Path, text: str) -> None:
    """Write the file mode 0600 from the start (it holds the private key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


class BringUpError(Exception):
    pass


def bring_up(path: Path) -> str:
    """`wg-quick up` the file (wireguard-go where the kernel lacks WireGuard); the
    interface's name."""
    name = path.name.removesuffix(".conf")
    if not path.name.endswith(".conf") or not _NAME.fullmatch(name):
        raise BringUpError(f"{path.name}: wg-quick needs NAME.conf with NAME of 1-15 characters")
    if os.geteuid() != 0:
        raise BringUpError("bringing an interface up needs root; use the file with wg-quick")
    if shutil.which("wg-quick") is None:
        raise BringUpError("wg-quick is missing: apt-get install wireguard-tools")
    done = subprocess.run(
        ["wg-quick", "up", str(path.resolve())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise BringUpError(f"wg-quick up failed: {done.stderr.strip()[-500:]}")
    return name
