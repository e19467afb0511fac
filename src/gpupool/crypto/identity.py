"""Ed25519 identities: an agent's key pair, its worker id, and the key file on disk.

The worker id is derived from the public key (`w-` and the first 20 characters of the
base32 SHA-256 of the raw key), so a worker cannot claim another's id without its key.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)


class KeyFileError(Exception):
    """The key file exists but cannot be used (bad permissions or contents)."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


def worker_id_for(public_key: bytes) -> str:
    digest = hashlib.sha256(public_key).digest()
    return "w-" + base64.b32encode(digest).decode().lower()[:20]


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Identity:
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> Identity:
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def public_key_b64(self) -> str:
        return b64(self.public_key)

    @property
    def worker_id(self) -> str:
        return worker_id_for(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def private_bytes(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )


def write_secret(path: Path, data: bytes) -> None:
    """Write `data` to a new file that only its owner can read (mode 0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_secret(path: Path) -> bytes:
    """Read a secret file, refusing one that group or others can read."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path} is readable by others (mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
        )
    return path.read_bytes()


def load(path: Path) -> Identity:
    """The identity kept at `path` (FileNotFoundError when there is none)."""
    raw = read_secret(path)
    try:
        return Identity(Ed25519PrivateKey.from_private_bytes(unb64(raw.decode().strip())))
    except ValueError as exc:
        raise KeyFileError(f"{path} does not hold an Ed25519 private key") from exc


def load_or_create(path: Path) -> tuple[Identity, bool]:
    """The identity kept at `path`, created on first use. Returns (identity, created)."""
    if path.exists():
        return load(path), False
    identity = Identity.generate()
    write_secret(path, (b64(identity.private_bytes()) + "\n").encode())
    return identity, True
