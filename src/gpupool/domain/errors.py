"""The errors gpupool's rules raise, drawn once.

    GpupoolError
    ├── InvalidRequest       the input breaks a rule (HTTP 422)
    ├── NotFound             no such thing, or not yours to see (HTTP 404)
    ├── Conflict             the thing exists but is in the wrong state (HTTP 409)
    │   └── InsufficientCapacity   too few devices match a booking (HTTP 409, with a Shortfall)
    ├── InsufficientFunds    a move would overdraw an account (HTTP 402, with the shortfall)
    ├── Unauthorized         missing or bad credentials or signature (HTTP 401)
    └── Forbidden            authenticated, but not allowed (HTTP 403)

Each error carries a short machine-readable `code` and a human message; the coordinator's
HTTP layer turns them into JSON bodies `{"error": code, "message": ..., **details}`.
"""

from __future__ import annotations

from typing import Any


class GpupoolError(Exception):
    code = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(GpupoolError):
    code = "invalid_request"


class NotFound(GpupoolError):
    code = "not_found"


class Conflict(GpupoolError):
    code = "conflict"


class InsufficientCapacity(Conflict):
    code = "insufficient_capacity"


class InsufficientFunds(GpupoolError):
    code = "insufficient_funds"


class Unauthorized(GpupoolError):
    code = "unauthorized"


class Forbidden(GpupoolError):
    code = "forbidden"
