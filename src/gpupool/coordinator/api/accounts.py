"""Accounts: created by the admin; any account can read itself."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from gpupool.coordinator.api import convert
from gpupool.coordinator.api.deps import AccountDep, AdminDep, ServicesDep
from gpupool.wire import models as w

router = APIRouter(prefix="/v1/accounts", tags=["accounts"])


@router.post("", status_code=201, dependencies=[AdminDep])
async def create_account(body: w.AccountCreate, svc: ServicesDep) -> w.AccountCreated:
    created = await run_in_threadpool(svc.accounts.create, body.role, body.name)
    out = convert.account(created.account)
    return w.AccountCreated(**out.model_dump(), api_key=created.api_key)


@router.get("/me")
async def me(account: AccountDep) -> w.AccountOut:
    return convert.account(account)


@router.put("/{account_id}/soc2", dependencies=[AdminDep])
async def set_soc2(account_id: str, body: w.Soc2Update, svc: ServicesDep) -> w.AccountOut:
    return convert.account(
        await run_in_threadpool(svc.accounts.set_soc2_verified, account_id, body.verified)
    )
