"""Every error leaves the API as JSON `{"error": code, "message": ..., ...}`, never as a bare
500: rule errors map to their status, validation errors to 422, and anything unexpected is
logged and answered with a 500 that reveals nothing."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from gpupool.domain import errors

log = logging.getLogger("gpupool.coordinator")

STATUS = {
    errors.InvalidRequest: 422,
    errors.NotFound: 404,
    errors.InsufficientCapacity: 409,
    errors.Conflict: 409,
    errors.InsufficientFunds: 402,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
}

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def error_response(status: int, code: str, message: str, **details: Any) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **details}, status_code=status)


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.GpupoolError)
    async def _rule(_: Request, exc: errors.GpupoolError) -> JSONResponse:
        status = next((s for t, s in STATUS.items() if isinstance(exc, t)), 400)
        return error_response(status, exc.code, exc.message, **exc.details)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(p['loc'])}: {p['msg']}" for p in problems[:5])
        return error_response(
            422, "invalid_request", summary or "invalid request", problems=problems
        )

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("event=unhandled_error method=%s path=%s", request.method, request.url.path)
        return error_response(500, "internal", "internal error; the coordinator logged it")
