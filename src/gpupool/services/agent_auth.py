"""Checking an agent's signed request: signature, clock skew and replay.

The seen-nonce memory lives in the database, so several coordinator replicas share it; a
nonce needs remembering only for the skew window, since an older timestamp is refused anyway.
A request's nonce is remembered in the transaction that does the request's work: for most
routes a transaction of its own (`verify`), for sample batches the one that stores them
(`authenticate`, then `Authenticated.remember_nonce`), so a replay is refused and nothing of
a refused request is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpupool.crypto.identity import unb64, verify, worker_id_for
from gpupool.crypto.requests import MAX_SKEW_SECONDS, signing_message
from gpupool.domain.errors import Unauthorized
from gpupool.services.ports import Clock, Database, Transaction


@dataclass(frozen=True, slots=True)
class SignedRequest:
    method: str
    path: str
    body: bytes
    worker_id: str | None
    timestamp: str | None
    nonce: str | None
    signature: str | None


@dataclass(frozen=True, slots=True)
class Authenticated:
    """A request whose signature holds; it may act once its nonce is remembered."""

    worker_id: str
    public_key: str  # base64, as registered
    nonce: str
    at: float

    def remember_nonce(self, tx: Transaction) -> None:
        """Refuse a replay; the nonce is kept if and only if `tx` commits."""
        if not tx.nonces.remember(self.worker_id, self.nonce, self.at):
            raise Unauthorized("replayed request (nonce already used)")


class AgentAuth:
    def __init__(self, db: Database, clock: Clock, max_skew: float = MAX_SKEW_SECONDS) -> None:
        self._db = db
        self._clock = clock
        self._max_skew = max_skew
        # Registered keys by worker id. The id is derived from the key, so an id names one
        # key for good: the cache can never hold a stale key, and saves a transaction per
        # request.
        self._keys: dict[str, str] = {}

    def verify(self, request: SignedRequest, public_key_b64: str | None = None) -> str:
        """The worker id that signed `request`, or Unauthorized; its nonce is remembered.

        `public_key_b64` is given at registration, when the key arrives in the body; the
        worker id must then be the one derived from it. Otherwise the registered key is used.
        """
        who = self.authenticate(request, public_key_b64)
        with self._db.transaction() as tx:
            who.remember_nonce(tx)
        return who.worker_id

    def authenticate(
        self, request: SignedRequest, public_key_b64: str | None = None
    ) -> Authenticated:
        """Every check of `verify` but replay: the caller must remember the nonce in the
        transaction that does the request's work."""
        worker_id, ts, nonce, sig = (
            request.worker_id,
            request.timestamp,
            request.nonce,
            request.signature,
        )
        if not (worker_id and ts and nonce and sig):
            raise Unauthorized("unsigned request: agent requests must carry signature headers")
        if not 16 <= len(nonce) <= 128:
            raise Unauthorized("nonce must be 16 to 128 characters")
        try:
            sent_at = float(ts)
            signature = unb64(sig)
        except ValueError as exc:
            raise Unauthorized("malformed timestamp or signature header") from exc
        now = self._clock.now()
        if abs(now - sent_at) > self._max_skew:
            raise Unauthorized(
                f"request timestamp is {now - sent_at:+.1f} s from the coordinator's clock "
                f"(at most {self._max_skew:.0f} s allowed)"
            )
        if public_key_b64 is None:
            public_key_b64 = self._registered_key(worker_id)
        try:
            public_key = unb64(public_key_b64)
        except ValueError as exc:
            raise Unauthorized("public key is not base64") from exc
        if worker_id_for(public_key) != worker_id:
            raise Unauthorized("worker id does not belong to this public key")
        message = signing_message(request.method, request.path, ts, nonce, request.body)
        if not verify(public_key, signature, message):
            raise Unauthorized("bad signature")
        return Authenticated(worker_id, public_key_b64, nonce, now)

    def _registered_key(self, worker_id: str) -> str:
        key = self._keys.get(worker_id)
        if key is None:
            with self._db.transaction() as tx:
                worker = tx.workers.get(worker_id)
            if worker is None:
                raise Unauthorized(f"unknown worker {worker_id}: register first")
            key = self._keys[worker_id] = worker.public_key
        return key

    def forget_old_nonces(self) -> int:
        cutoff = self._clock.now() - 2 * self._max_skew
        with self._db.transaction() as tx:
            return tx.nonces.forget_before(cutoff)
