"""What every route needs: the services, and who is calling (account, admin or worker)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from gpupool.coordinator.settings import CoordinatorSettings
from gpupool.crypto import requests as signed
from gpupool.domain.models import Account, Role
from gpupool.services.accounts import Accounts
from gpupool.services.agent_auth import AgentAuth, SignedRequest
from gpupool.services.challenges import Challenges
from gpupool.services.ledger import Ledger
from gpupool.services.market import Market
from gpupool.services.raycluster import RayClusters
from gpupool.services.registry import Registry
from gpupool.services.settlement import Settlement
from gpupool.services.spot_checks import SpotChecks
from gpupool.services.stake import Stakes
from gpupool.services.tasks import Tasks
from gpupool.services.timelock import TimeLock


@dataclass(frozen=True, slots=True)
class Services:
    settings: CoordinatorSettings
    accounts: Accounts
    auth: AgentAuth
    registry: Registry
    market: Market
    challenges: Challenges
    spot_checks: SpotChecks
    timelock: TimeLock
    ray: RayClusters
    ledger: Ledger
    settlement: Settlement
    stakes: Stakes
    tasks: Tasks


async def long_poll(
    request: Request, svc: Services, wait: float, changed: Callable[[], bool]
) -> None:
    """Return once `changed()` (run in the thread pool) is true, `wait` seconds have passed
    (capped by the settings), or the client went away; re-checks every
    `long_poll_check_seconds`."""
    deadline = time.monotonic() + min(wait, svc.settings.long_poll_max_seconds)
    while time.monotonic() < deadline and not await request.is_disconnected():
        if await run_in_threadpool(changed):
            return
        await asyncio.sleep(svc.settings.long_poll_check_seconds)


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


ServicesDep = Annotated[Services, Depends(services)]


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def account(request: Request, svc: ServicesDep) -> Account:
    return await run_in_threadpool(svc.accounts.authenticate, bearer(request))


async def renter(request: Request, svc: ServicesDep) -> Account:
    return await run_in_threadpool(svc.accounts.authenticate, bearer(request), Role.RENTER)


async def supplier(request: Request, svc: ServicesDep) -> Account:
    return await run_in_threadpool(svc.accounts.authenticate, bearer(request), Role.SUPPLIER)


async def admin(request: Request, svc: ServicesDep) -> None:
    svc.accounts.check_admin(bearer(request))


async def account_or_admin(request: Request, svc: ServicesDep) -> Account | None:
    """None for the admin key, else the key's account."""
    key = bearer(request)
    if key is not None and svc.accounts.is_admin(key):
        return None
    return await run_in_threadpool(svc.accounts.authenticate, key)


async def signed_request(request: Request) -> SignedRequest:
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    h = request.headers
    return SignedRequest(
        method=request.method,
        path=path,
        body=await request.body(),
        worker_id=h.get(signed.WORKER_HEADER),
        timestamp=h.get(signed.TIMESTAMP_HEADER),
        nonce=h.get(signed.NONCE_HEADER),
        signature=h.get(signed.SIGNATURE_HEADER),
    )


async def worker(svc: ServicesDep, req: Annotated[SignedRequest, Depends(signed_request)]) -> str:
    """The id of the registered worker that signed this request."""
    return await run_in_threadpool(svc.auth.verify, req)


RenterDep = Annotated[Account, Depends(renter)]
SupplierDep = Annotated[Account, Depends(supplier)]
AccountDep = Annotated[Account, Depends(account)]
ViewerDep = Annotated[Account | None, Depends(account_or_admin)]
WorkerDep = Annotated[str, Depends(worker)]
SignedDep = Annotated[SignedRequest, Depends(signed_request)]
AdminDep = Depends(admin)


Model = TypeVar("Model", bound=BaseModel)


def parse_body(model: type[Model], raw: bytes) -> Model:
    """A route's JSON body parsed straight from its bytes (pydantic's own JSON parser), and
    refused as FastAPI refuses a body. For the large signed bodies whose bytes a route holds
    anyway: FastAPI would parse them a second time, with the slower standard parser."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` documenting a body that the route parses with `parse_body`."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    content = {"application/json": {"schema": inline(schema)}}
    return {"requestBody": {"required": True, "content": content}}
