"""Accounts and API keys: creating them (admin only), and finding the account of a key."""

from __future__ import annotations

from dataclasses import dataclass

from gpupool.crypto.apikeys import hash_api_key, new_api_key, same_secret
from gpupool.domain.errors import Forbidden, NotFound, Unauthorized
from gpupool.domain.models import Account, Role
from gpupool.services.ids import new_id
from gpupool.services.ports import Clock, Database


@dataclass(frozen=True, slots=True)
class NewAccount:
    account: Account
    api_key: str  # shown once, never stored


class Accounts:
    def __init__(self, db: Database, clock: Clock, admin_key: str) -> None:
        self._db = db
        self._clock = clock
        self._admin_key = admin_key

    def is_admin(self, presented: str) -> bool:
        return same_secret(presented, self._admin_key)

    def check_admin(self, presented: str | None) -> None:
        if not presented or not self.is_admin(presented):
            raise Unauthorized("this needs the coordinator's admin key")

    def create(self, role: Role, name: str) -> NewAccount:
        account = Account(new_id("a"), role, name, self._clock.now())
        key = new_api_key(role.value)
        with self._db.transaction() as tx:
            tx.accounts.add(account, hash_api_key(key))
        return NewAccount(account, key)

    def authenticate(self, key: str | None, role: Role | None = None) -> Account:
        if not key:
            raise Unauthorized("missing API key (Authorization: Bearer KEY)")
        with self._db.transaction() as tx:
            account = tx.accounts.by_key_hash(hash_api_key(key))
        if account is None:
            raise Unauthorized("unknown API key")
        if role is not None and account.role is not role:
            raise Forbidden(f"this needs a {role} account; this key is a {account.role}'s")
        return account

    def set_soc2_verified(self, account_id: str, verified: bool) -> Account:
        with self._db.transaction() as tx:
            if tx.accounts.get(account_id) is None:
                raise NotFound(f"no account {account_id}")
            tx.accounts.set_soc2_verified(account_id, verified)
            account = tx.accounts.get(account_id)
        assert account is not None
        return account
