"""Lease scratch files: sealed with the lease's key, and unreadable once the key is gone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gpupool.agent.sandbox.scratch import Scratch, ScratchError


def test_files_are_sealed_on_disk_and_read_back_with_the_lease_key(tmp_path: Path) -> None:
    scratch = Scratch.create(tmp_path / "lease")
    path = scratch.write("ckpt-1.bin", b"weights " * 100)
    assert b"weights" not in path.read_bytes()
    assert scratch.read("ckpt-1.bin") == b"weights " * 100
    assert scratch.key_file.stat().st_mode & 0o777 == 0o600
    assert scratch.names() == ["ckpt-1.bin"]


def test_a_file_renamed_or_altered_does_not_decrypt(tmp_path: Path) -> None:
    scratch = Scratch.create(tmp_path / "lease")
    path = scratch.write("a.bin", b"data")
    shutil.copy(path, scratch.directory / "b.bin")
    with pytest.raises(ScratchError):
        scratch.read("b.bin")
    sealed = bytearray(path.read_bytes())
    sealed[-1] ^= 1
    path.write_bytes(bytes(sealed))
    with pytest.raises(ScratchError):
        scratch.read("a.bin")


def test_after_destroy_a_saved_copy_of_the_data_cannot_be_read(tmp_path: Path) -> None:
    scratch = Scratch.create(tmp_path / "lease")
    scratch.write("secret.bin", b"the renter's data")
    saved = tmp_path / "copy"
    shutil.copytree(scratch.directory, saved)
    scratch.destroy()
    assert not scratch.key_file.exists() and not scratch.directory.exists()
    with pytest.raises(ScratchError, match="gone"):
        Scratch(saved, scratch.key_file).read("secret.bin")
    # Another lease's key does not open it either.
    other = Scratch.create(tmp_path / "other")
    with pytest.raises(ScratchError):
        Scratch(saved, other.key_file).read("secret.bin")


def test_processes_find_the_scratch_through_the_environment(tmp_path: Path) -> None:
    scratch = Scratch.create(tmp_path / "lease")
    found = Scratch.from_env(scratch.env())
    found.write("x.bin", b"1")
    assert scratch.read("x.bin") == b"1"
    with pytest.raises(ScratchError, match="not inside a lease"):
        Scratch.from_env({})
    with pytest.raises(ScratchError, match="bad scratch file name"):
        scratch.write("../escape", b"")
