"""API keys: long random secrets shown once; the coordinator keeps only their SHA-256.

Keys carry 256 bits of randomness, so a plain SHA-256 is a safe digest to store (a slow
password hash protects low-entropy secrets, which these are not).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_api_key(prefix: str) -> str:
    return f"gp{prefix[0]}_{secrets.token_urlsafe(32)}"


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def same_secret(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
