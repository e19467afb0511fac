"""Checking an agent's signed request: signature, clock skew and replay.

The seen-nonce memory lives in the database, so several coordinator replicas share it; a
nonce needs remembering only for the skew window, since an older timestamp is refused anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpupool.crypto.identity import unb64, verify, worker_id_for
from gpupool.crypto.requests import MAX_SKEW_SECONDS, signing_message
from gpupool.domain.errors import Unauthorized
from gpupool.services.ports import Clock, Database


@dataclass(frozen=True, slots=True)
class SignedRequest:
    method: str
    path: str
    body: bytes
    worker_id: str | None
    timestamp: str | None
    nonce: str | None
    signature: str | None


class AgentAuth:
    def __init__(self, db: Database, clock: Clock, max_skew: float = MAX_SKEW_SECONDS) -> None:
        self._db = db
        self._clock = clock
        self._max_skew = max_skew

    def verify(self, request: SignedRequest, public_key_b64: str | None = None) -> str:
        """The worker id that signed `request`, or Unauthorized.

        `public_key_b64` is given at registration, when the key arrives in the body; the
        worker id must then be the one derived from it. Otherwise the registered key is used.
        """
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
        with self._db.transaction() as tx:
            if public_key_b64 is None:
                worker = tx.workers.get(worker_id)
                if worker is None:
                    raise Unauthorized(f"unknown worker {worker_id}: register first")
                public_key_b64 = worker.public_key
            try:
                public_key = unb64(public_key_b64)
            except ValueError as exc:
                raise Unauthorized("public key is not base64") from exc
            if worker_id_for(public_key) != worker_id:
                raise Unauthorized("worker id does not belong to this public key")
            message = signing_message(request.method, request.path, ts, nonce, request.body)
            if not verify(public_key, signature, message):
                raise Unauthorized("bad signature")
            if not tx.nonces.remember(worker_id, nonce, now):
                raise Unauthorized("replayed request (nonce already used)")
        return worker_id

    def forget_old_nonces(self) -> int:
        cutoff = self._clock.now() - 2 * self._max_skew
        with self._db.transaction() as tx:
            return tx.nonces.forget_before(cutoff)
