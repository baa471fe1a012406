"""The one mapping from the error tree to HTTP, and the one error body shape.

Every error response is ``{"error": {"code", "message", "field"}}``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from trading.errors import (
    AtpError,
    BadRequest,
    Conflict,
    Forbidden,
    Internal,
    Invalid,
    NotFound,
    QuotaExceeded,
    RateLimited,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger(__name__)

STATUS: dict[type[AtpError], int] = {
    BadRequest: 400,
    Invalid: 422,
    NotFound: 404,
    Conflict: 409,
    Unauthenticated: 401,
    Forbidden: 403,
    RateLimited: 429,
    QuotaExceeded: 429,
    Unavailable: 503,
    Internal: 500,
}


def status_for(exc: AtpError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def error_response(exc: AtpError) -> JSONResponse:
    status = status_for(exc)
    if status >= 500 and status != 503:
        log.error("internal error %r", exc)
        return JSONResponse(error_body(exc.code, "internal error"), status_code=status)
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(exc.code, exc.message, exc.field), status_code=status,
                        headers=headers)


def _field_of(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


_HTTP_CODES = {401: "unauthenticated", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 413: "too_large", 422: "invalid",
               429: "rate_limited", 503: "unavailable"}


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that render every error in the one shape."""

    @app.exception_handler(AtpError)
    async def _atp(_request: Request, exc: AtpError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = _field_of(tuple(first.get("loc", ())))
        message = str(first.get("msg", "invalid request"))
        return JSONResponse(error_body("invalid", f"{field}: {message}" if field else message,
                                       field), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error: %s", type(exc).__name__)
        return JSONResponse(error_body("internal", "internal error"), status_code=500)


async def bounded_body(request: Request, limit: int, what: str = "the body") -> bytes:
    """The body, refused (400 ``bad_payload``) as soon as it exceeds `limit` bytes: never
    read it all first. `what` names it in the message ("the event is too large")."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"{what} is too large (limit {limit:,} bytes)", code="bad_payload", field="body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"{what} is too large (limit {limit:,} bytes)", code="bad_payload",
                             field="body")
        chunks.append(chunk)
    return b"".join(chunks)
