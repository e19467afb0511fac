"""The renter machine's wg-quick file: its content, its mode, and what `--up` refuses."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gpupool.client.wgconfig import BringUpError, bring_up, default_name, render, write_config
from gpupool.crypto.wgkeys import KeyPair, is_public_key
from gpupool.wire.mesh import MeshMapOut, MeshPeerOut


def _map() -> MeshMapOut:
    member = KeyPair.generate()
    return MeshMapOut(
        version="",
        lease_id="",
        worker_id="client:c-abc",
        address="100.64.0.9",
        direct_address="fd67:9a3c:51e0::6440:9",
        forwards=False,
        peers=[
            MeshPeerOut(
                worker_id="w-1",
                address="100.64.0.1",
                public_key=member.public_key,
                endpoint="10.0.0.1:51820",
                allowed_ips=["100.64.0.1/32", "fd67:9a3c:51e0::6440:1/128"],
            )
        ],
    )


def test_the_file_holds_the_key_the_address_and_every_peer(tmp_path: Path) -> None:
    key = KeyPair.generate()
    text = render(_map(), key)
    assert f"PrivateKey = {key.private_key}" in text
    assert "Address = 100.64.0.9/32, fd67:9a3c:51e0::6440:9/128" in text
    assert "Endpoint = 10.0.0.1:51820" in text
    assert "AllowedIPs = 100.64.0.1/32, fd67:9a3c:51e0::6440:1/128" in text
    path = tmp_path / "sub" / "gpcabc.conf"
    write_config(path, text)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_config(path, text)  # a second connect replaces it, still 0600
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_names_fit_an_interface() -> None:
    assert default_name("c-0123456789abcdef") == "gpc0123456789ab"
    assert len(default_name("c-0123456789abcdef")) == 15


@pytest.mark.parametrize("name", ["toolongforaninterface.conf", "gpc.txt", "a b.conf"])
def test_up_refuses_a_file_wg_quick_cannot_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(BringUpError):
        bring_up(tmp_path / name)


def test_public_keys_are_checked() -> None:
    assert is_public_key(KeyPair.generate().public_key)
    assert not is_public_key("A" * 43 + "=" + "x")
    assert not is_public_key("not base64 at all!!")
