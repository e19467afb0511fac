"""Request and response bodies of the ledger's `/v1/ledger` API (docs/ledger.md).

Amounts travel twice: exact integer micro-units (`*_micros`) and the same as a decimal
string for people."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from gpupool.wire.models import Price, Request, Response

Key = Annotated[str, StringConstraints(min_length=1, max_length=120, pattern=r"^[A-Za-z0-9._:-]+$")]


class FundIn(Request):
    account_id: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    amount: Price = Field(gt=0)
    key: Key | None = Field(
        default=None, description="Idempotency key: a retry with the same key funds once."
    )


class PostingOut(Response):
    account: str
    amount_micros: int
    amount: str


class EntryOut(Response):
    seq: int
    key: str
    kind: str
    at_ms: int
    memo: dict[str, str | int]
    postings: list[PostingOut]
    prev_hash: str
    hash: str
    fresh: bool | None = Field(
        default=None, description="On a write: False when the key had already been used."
    )


class BalanceOut(Response):
    account_id: str
    role: str
    available_micros: int
    available: str
    held_micros: int
    held: str
    held_by_account: dict[str, int]


class AuditOut(Response):
    entries: int
    chain_ok: bool
    chain_error: str | None
    balances_match: bool
    negative: list[str]
    minted_micros: int
    total_micros: int
    balanced: bool


class StakeIn(Request):
    key: Key | None = Field(default=None, description="Idempotency key for the top-up.")


class StakeOut(Response):
    device_id: str
    worker_id: str
    required_micros: int
    held_micros: int
    unstake_at: float | None
    in_pool: bool
