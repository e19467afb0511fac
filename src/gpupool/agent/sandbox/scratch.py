"""Lease scratch data, encrypted at rest with a per-lease key.

Each lease gets, on every member, a scratch folder for the data its processes exchange and
their checkpoints, and a 256-bit AES-GCM key in a file of mode 0600 next to it. The lease's
processes find both through the environment (`GPUPOOL_SCRATCH_DIR`,
`GPUPOOL_SCRATCH_KEY_FILE`) and use `Scratch` to write and read files: each file is
`nonce (12 bytes) || AES-GCM ciphertext`, with the file's name as associated data, so a file
cannot be renamed into another without failing to decrypt. At lease end the agent overwrites
and deletes the key and removes the folder: whatever copy of the ciphertext survives on the
disk cannot be decrypted any more. See docs/ray.md.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gpupool.agent.files import shred

DIR_ENV = "GPUPOOL_SCRATCH_DIR"
KEY_ENV = "GPUPOOL_SCRATCH_KEY_FILE"
KEY_BYTES = 32
NONCE_BYTES = 12
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


class ScratchError(Exception):
    """A scratch file is missing, was tampered with, or its key is gone."""


class Scratch:
    """One lease's encrypted scratch folder on this member."""

    def __init__(self, directory: Path, key_file: Path) -> None:
        self.directory = directory
        self.key_file = key_file

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Scratch:
        """The scratch of the lease this process runs in."""
        env = os.environ if environ is None else environ
        if DIR_ENV not in env or KEY_ENV not in env:
            raise ScratchError("not inside a lease: no scratch folder in the environment")
        return cls(Path(env[DIR_ENV]), Path(env[KEY_ENV]))

    @classmethod
    def at(cls, lease_dir: Path) -> Scratch:
        """The scratch of a lease whose folder is `lease_dir` (existing or not)."""
        return cls(lease_dir / "scratch", lease_dir / "scratch.key")

    @classmethod
    def create(cls, lease_dir: Path) -> Scratch:
        """A fresh scratch folder and key for a lease (the agent, at bring-up)."""
        scratch = cls.at(lease_dir)
        scratch.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(scratch.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(AESGCM.generate_key(bit_length=8 * KEY_BYTES))
        return scratch

    def env(self) -> dict[str, str]:
        return {DIR_ENV: str(self.directory), KEY_ENV: str(self.key_file)}

    def _aead(self) -> AESGCM:
        try:
            key = self.key_file.read_bytes()
        except FileNotFoundError:
            raise ScratchError("the lease's scratch key is gone: the lease has ended") from None
        if len(key) != KEY_BYTES or not any(key):
            raise ScratchError("the lease's scratch key was destroyed")
        return AESGCM(key)

    def _path(self, name: str) -> Path:
        if not _NAME.fullmatch(name):
            raise ScratchError(f"bad scratch file name {name!r}")
        return self.directory / name

    def write(self, name: str, data: bytes) -> Path:
        path = self._path(name)
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + self._aead().encrypt(nonce, data, name.encode())
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_bytes(sealed)
        tmp.replace(path)  # a reader never sees half a file
        return path

    def read(self, name: str) -> bytes:
        try:
            sealed = self._path(name).read_bytes()
        except FileNotFoundError:
            raise ScratchError(f"no scratch file {name}") from None
        return open_sealed(self._aead(), name, sealed)

    def names(self) -> list[str]:
        return sorted(p.name for p in self.directory.iterdir() if not p.name.startswith("."))

    def destroy(self) -> None:
        """Overwrite and delete the key, then remove the folder (the agent, at lease end)."""
        shred(self.key_file)
        shutil.rmtree(self.directory, ignore_errors=True)


def open_sealed(aead: AESGCM, name: str, sealed: bytes) -> bytes:
    try:
        return aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], name.encode())
    except (InvalidTag, ValueError):
        raise ScratchError(f"scratch file {name} does not decrypt with this lease's key") from None
