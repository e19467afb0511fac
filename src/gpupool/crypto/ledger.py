"""The ledger journal's hash chain.

Entry `n` is the canonical JSON of `{seq, prev, key, kind, postings, memo, at_ms}`, where
`prev` is the hash of entry `n - 1` (64 zeros for the first) and `postings` is the list of
`[account, amount]` sorted by account; its hash is sha256 of those bytes. Changing, dropping
or reordering any entry breaks every hash after it, so a journal's last hash commits to its
whole history.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gpupool.crypto.canonical import canonical_json, sha256_hex
from gpupool.domain.ledger import Move, MoveKind, Posting, make_move

GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    prev_hash: str
    hash: str
    at_ms: int
    move: Move

    @property
    def key(self) -> str:
        return self.move.key

    def to_dict(self) -> dict[str, Any]:
        return {**entry_body(self.seq, self.prev_hash, self.move, self.at_ms), "hash": self.hash}


def entry_body(seq: int, prev_hash: str, move: Move, at_ms: int) -> dict[str, Any]:
    return {
        "seq": seq,
        "prev": prev_hash,
        "key": move.key,
        "kind": move.kind.value,
        "postings": [[p.account, p.amount] for p in sorted(move.postings, key=lambda p: p.account)],
        "memo": dict(move.memo),
        "at_ms": at_ms,
    }


def seal(seq: int, prev_hash: str, move: Move, at_ms: int) -> Entry:
    """The journal entry that appends `move` after the entry hashed `prev_hash`."""
    digest = sha256_hex(canonical_json(entry_body(seq, prev_hash, move, at_ms)))
    return Entry(seq, prev_hash, digest, at_ms, move)


def entry_from_dict(data: dict[str, Any]) -> Entry:
    move = make_move(
        MoveKind(data["kind"]),
        data["key"],
        [(str(a), int(v)) for a, v in data["postings"]],
        data.get("memo") or {},
    )
    return Entry(int(data["seq"]), data["prev"], data["hash"], int(data["at_ms"]), move)


def verify_journal(entries: Iterable[Entry]) -> str | None:
    """None when the entries form an unbroken chain from the genesis, numbered 1, 2, ...,
    each balanced and hashed over its content; else what is wrong at the first break."""
    prev, expected = GENESIS, 1
    for entry in entries:
        if entry.seq != expected:
            return f"entry {entry.seq} follows entry {expected - 1}"
        if entry.prev_hash != prev:
            return f"entry {entry.seq} does not name the hash of entry {expected - 1}"
        if sum(p.amount for p in entry.move.postings) != 0:
            return f"entry {entry.seq} does not balance"
        if seal(entry.seq, prev, entry.move, entry.at_ms).hash != entry.hash:
            return f"entry {entry.seq} does not match its hash"
        prev, expected = entry.hash, expected + 1
    return None


def postings_of(entries: Iterable[Entry]) -> Iterable[Posting]:
    for entry in entries:
        yield from entry.move.postings
