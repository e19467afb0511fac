"""WireGuard key pairs (X25519, base64 as wg(8) writes them).

Shared by the agent (one key pair per agent, kept in its state folder) and the renter's
client (`gpupool cluster connect` makes one on the renter's machine); the private key never
leaves the machine that made it.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey


@dataclass(frozen=True)
class KeyPair:
    private_key: str  # base64, as wg(8) takes it
    public_key: str

    @classmethod
    def generate(cls) -> KeyPair:
        return cls.from_private(X25519PrivateKey.generate())

    @classmethod
    def from_private(cls, key: X25519PrivateKey) -> KeyPair:
        raw = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return cls(base64.b64encode(raw).decode(), base64.b64encode(public).decode())

    def __repr__(self) -> str:  # never print the private key
        return f"KeyPair(public_key={self.public_key!r})"


def is_public_key(text: str) -> bool:
    """Whether `text` is a base64 X25519 public key (32 bytes), as WireGuard takes it."""
    try:
        raw = base64.b64decode(text, validate=True)
        X25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        return False
    return len(text) == 44
