"""Short random identifiers with a readable prefix (`a-` accounts, `c-` clusters...)."""

from __future__ import annotations

import secrets

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def new_id(prefix: str, length: int = 12) -> str:
    return prefix + "-" + "".join(secrets.choice(_ALPHABET) for _ in range(length))
