"""The coordinator's public signing key: `GET /v1/coordinator/key`, and a header on every
response that repeats it.

The key is what renters pin (trust on first use) and verify proofs against. Sending it on
every response costs a header and spares clients a request: a client that pinned the key
sees at once when a later answer comes from a coordinator holding another one.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpupool.coordinator.api.deps import ServicesDep
from gpupool.wire.models import COORDINATOR_KEY_HEADER, CoordinatorKeyOut

router = APIRouter(prefix="/v1", tags=["meta"])


@router.get("/coordinator/key", response_model=CoordinatorKeyOut)
async def coordinator_key(svc: ServicesDep) -> CoordinatorKeyOut:
    """Unauthenticated: the key is public, and a renter needs it before holding an account."""
    return CoordinatorKeyOut(public_key=svc.timelock.public_key)


class PresentKey:
    """Pure ASGI middleware (no buffering, so long polls and streamed job logs pass as they
    are) that adds the key header to every response the app starts."""

    def __init__(self, app: ASGIApp, public_key: str) -> None:
        self.app = app
        self.header = (COORDINATOR_KEY_HEADER.lower().encode(), public_key.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_key(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_key)
