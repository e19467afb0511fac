"""Signed agent requests.

An agent signs every request over `(method, path, timestamp, nonce, sha256(body))`, and sends
the result in four headers. The coordinator recomputes the message from what it received,
checks the signature against the worker's registered public key, and refuses a timestamp more
than `MAX_SKEW_SECONDS` from its own clock or a (worker, nonce) pair it has already seen
(`gpupool.services.agent_auth` keeps that memory).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from gpupool.crypto.canonical import sha256_hex
from gpupool.crypto.identity import Identity, b64

MAX_SKEW_SECONDS = 30.0

WORKER_HEADER = "X-Gpupool-Worker"
TIMESTAMP_HEADER = "X-Gpupool-Timestamp"
NONCE_HEADER = "X-Gpupool-Nonce"
SIGNATURE_HEADER = "X-Gpupool-Signature"


def signing_message(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    return "\n".join(
        ["gpupool-agent-request-v1", method.upper(), path, timestamp, nonce, sha256_hex(body)]
    ).encode()


@dataclass(frozen=True, slots=True)
class SignedHeaders:
    worker_id: str
    timestamp: str
    nonce: str
    signature: str

    def as_dict(self) -> dict[str, str]:
        return {
            WORKER_HEADER: self.worker_id,
            TIMESTAMP_HEADER: self.timestamp,
            NONCE_HEADER: self.nonce,
            SIGNATURE_HEADER: self.signature,
        }


def sign_request(
    identity: Identity,
    method: str,
    path: str,
    body: bytes,
    now: float,
    nonce: str | None = None,
) -> SignedHeaders:
    timestamp = f"{now:.3f}"
    nonce = nonce or secrets.token_hex(16)
    signature = identity.sign(signing_message(method, path, timestamp, nonce, body))
    return SignedHeaders(identity.worker_id, timestamp, nonce, b64(signature))
