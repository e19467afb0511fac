"""A request-body size limit as pure ASGI middleware.

The body is read (up to the limit) before the application sees it, so an oversized request,
with or without Content-Length, is refused with 413 and never half-processed.

Some paths may take larger bodies (`larger`: path -> limit). While reading, the middleware
notes how the body arrived in `request.state.body_timing`: the bytes that came after the
first chunk and the seconds they took. That is a measure of the client's upload rate which
excludes connection set-up and request latency (the bandwidth route uses it).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass(frozen=True, slots=True)
class BodyTiming:
    """Bytes received after the body's first chunk, and the seconds they took."""

    timed_bytes: int
    seconds: float


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, larger: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.larger = larger or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.larger.get(scope["path"], self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._refuse(send, limit)
            return
        chunks: list[bytes] = []
        size = 0
        first_at = last_at = 0.0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            if chunk:
                last_at = time.perf_counter()
                first_at = first_at or last_at
            size += len(chunk)
            if size > limit:
                await self._refuse(send, limit)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        first = next((len(c) for c in chunks if c), 0)
        scope.setdefault("state", {})["body_timing"] = BodyTiming(size - first, last_at - first_at)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, limit: int) -> None:
        payload = json.dumps(
            {
                "error": "body_too_large",
                "message": f"request bodies are limited to {limit} bytes",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
