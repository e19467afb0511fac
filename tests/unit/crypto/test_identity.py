"""Agent identities on disk: created once at mode 0600, reloaded with the same worker id."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gpupool.crypto.identity import (
    Identity,
    KeyFileError,
    load_or_create,
    verify,
    worker_id_for,
)
from gpupool.crypto.requests import sign_request, signing_message


def test_identity_is_created_private_and_reloaded_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "state" / "identity.key"
    first, created = load_or_create(path)
    assert created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created_again = load_or_create(path)
    assert not created_again
    assert again.public_key == first.public_key
    assert again.worker_id == first.worker_id == worker_id_for(first.public_key)


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    load_or_create(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_or_create(path)


def test_garbage_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    path.write_text("not a key\n")
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError):
        load_or_create(path)


def test_worker_ids_differ_per_key() -> None:
    ids = {Identity.generate().worker_id for _ in range(20)}
    assert len(ids) == 20
    assert all(i.startswith("w-") and len(i) == 22 for i in ids)


def test_signature_covers_method_path_time_nonce_and_body() -> None:
    me = Identity.generate()
    headers = sign_request(me, "POST", "/v1/agent/heartbeat", b"{}", 1000.0, nonce="n" * 32)
    import base64

    sig = base64.b64decode(headers.signature)
    good = signing_message("POST", "/v1/agent/heartbeat", headers.timestamp, "n" * 32, b"{}")
    assert verify(me.public_key, sig, good)
    for changed in (
        signing_message("GET", "/v1/agent/heartbeat", headers.timestamp, "n" * 32, b"{}"),
        signing_message("POST", "/v1/agent/leases", headers.timestamp, "n" * 32, b"{}"),
        signing_message("POST", "/v1/agent/heartbeat", "1001.000", "n" * 32, b"{}"),
        signing_message("POST", "/v1/agent/heartbeat", headers.timestamp, "m" * 32, b"{}"),
        signing_message("POST", "/v1/agent/heartbeat", headers.timestamp, "n" * 32, b"{ }"),
    ):
        assert not verify(me.public_key, sig, changed)
