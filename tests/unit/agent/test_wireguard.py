"""The WireGuard driver's pure parts: keys on disk, interface names, the wg config, and
parsing ping; the interface itself is tested between namespaces (tests/integration/mesh)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from gpupool.agent.mesh.overlay_probe import direct_targets, parse_ping
from gpupool.agent.mesh.wireguard import (
    KEY_FILE,
    KeyPair,
    WireGuardError,
    WireGuardInterface,
    interface_name,
    load_or_create_key,
)
from gpupool.domain.mesh import Member, peer_maps


def test_the_key_is_created_once_with_mode_0600_and_loaded_again(tmp_path: Path) -> None:
    first = load_or_create_key(tmp_path / "state")
    path = tmp_path / "state" / KEY_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(tmp_path / "state") == first
    assert len(base64.b64decode(first.public_key)) == 32
    assert first.private_key not in repr(first)


def test_a_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    load_or_create_key(tmp_path)
    os.chmod(tmp_path / KEY_FILE, 0o644)
    with pytest.raises(WireGuardError, match="chmod 600"):
        load_or_create_key(tmp_path)


def test_a_damaged_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_text("not base64!")
    os.chmod(tmp_path / KEY_FILE, 0o600)
    with pytest.raises(WireGuardError, match="does not hold"):
        load_or_create_key(tmp_path)


def test_interface_names_fit_the_kernel_limit_and_differ_per_lease() -> None:
    names = {interface_name(f"lease-{i}") for i in range(1000)}
    assert len(names) == 1000
    assert all(len(n) <= 15 and n.startswith("gpw") for n in names)
    assert interface_name("lease-1") == interface_name("lease-1")


def test_the_wg_config_holds_every_peer_with_its_allowed_ips() -> None:
    keys = [KeyPair.generate() for _ in range(3)]
    members = [
        Member(f"w-{i}", f"100.64.0.{i + 1}", k.public_key, f"10.0.0.{i + 1}:51820")
        for i, k in enumerate(keys)
    ]
    maps = peer_maps(members, {("w-1", "w-2"): "w-0"})
    iface = WireGuardInterface("gpwtest", keys[1], listen_port=51820, backend="userspace")
    config = iface._config(maps["w-1"])
    assert f"PrivateKey = {keys[1].private_key}" in config
    assert "ListenPort = 51820" in config
    assert config.count("[Peer]") == 2
    assert "AllowedIPs = 100.64.0.1/32, 100.64.0.3/32, fd67:9a3c:51e0::6440:1/128" in config
    assert "Endpoint = 10.0.0.3:51820" in config


def test_an_overlong_interface_name_is_refused() -> None:
    with pytest.raises(ValueError):
        WireGuardInterface("x" * 16, KeyPair.generate(), backend="userspace")


def test_ping_output_gives_the_rtt_or_none() -> None:
    assert parse_ping("64 bytes from 100.64.0.2: icmp_seq=1 ttl=64 time=0.533 ms") == 0.533
    assert parse_ping("64 bytes from ::1: icmp_seq=1 ttl=64 time<1 ms") == 1.0
    assert parse_ping("1 packets transmitted, 0 received, 100% packet loss") is None


def test_probes_go_to_the_direct_addresses() -> None:
    members = [Member(f"w-{i}", f"100.64.0.{i + 1}", f"k{i}", None) for i in range(3)]
    targets = direct_targets(peer_maps(members)["w-0"])
    assert targets == {"w-1": "fd67:9a3c:51e0::6440:2", "w-2": "fd67:9a3c:51e0::6440:3"}
