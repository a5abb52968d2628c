"""Every error of the API as RFC 9457 ``application/problem+json`` with a stable ``code``.

The error classes (engine, worker and HTTP layer) live in ``worker.errors``, torch-free, so the
stores the API shares with the worker can raise them; this module only renders them. Every error
response, including FastAPI's own validation errors and unknown routes, has the same shape::

    {"type": "urn:gancompress:error:<code>", "title": ..., "status": ..., "detail": ...,
     "code": "<code>", "instance": "/v1/..."}
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from worker.errors import (
    GanCompressError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


def problem(
    status: int, code: str, title: str, detail: str, instance: str | None = None, **extra: Any
) -> JSONResponse:
    """Build one problem+json response."""
    body: dict[str, Any] = {
        "type": f"urn:gancompress:error:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extra.items() if k not in body})
    headers = {"WWW-Authenticate": 'Bearer realm="gancompress"'} if status == 401 else {}
    if status == 503:
        headers["Retry-After"] = "5"
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _from_error(request: Request, exc: GanCompressError) -> JSONResponse:
    extra = {k: v for k, v in exc.extra.items() if isinstance(v, str | int | float | bool | list | dict)}
    return problem(exc.status, exc.code, exc.title, exc.detail, request.url.path, **extra)


_STATUS_CODES = {
    400: ("bad_request", "Bad request"),
    401: (UnauthorizedError.code, UnauthorizedError.title),
    404: (NotFoundError.code, NotFoundError.title),
    405: (MethodNotAllowedError.code, MethodNotAllowedError.title),
    413: (PayloadTooLargeError.code, PayloadTooLargeError.title),
    415: (UnsupportedMediaTypeError.code, UnsupportedMediaTypeError.title),
}


def install_error_handlers(app: FastAPI) -> None:
    """Make every error of ``app`` a problem+json response."""

    @app.exception_handler(GanCompressError)
    async def _gancompress(request: Request, exc: GanCompressError) -> JSONResponse:
        if exc.status >= 500:
            log.error("http.error code=%s detail=%s", exc.code, exc.detail)
        return _from_error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in exc.errors()
        ]
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors) or "invalid request"
        return problem(
            422, "validation_error", "Request validation failed", detail, request.url.path, errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code, title = _STATUS_CODES.get(exc.status_code, ("http_error", "HTTP error"))
        detail = exc.detail if isinstance(exc.detail, str) else title
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}"
        return problem(exc.status_code, code, title, detail, request.url.path)

    @app.exception_handler(RedisError)
    async def _redis(request: Request, exc: RedisError) -> JSONResponse:
        log.error("http.redis_unavailable path=%s error=%s", request.url.path, exc)
        return problem(
            503,
            ServiceUnavailableError.code,
            ServiceUnavailableError.title,
            f"the job store (Redis) is unreachable or stalled ({type(exc).__name__}); retry later",
            request.url.path,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("http.unhandled path=%s", request.url.path)
        return problem(500, "internal_error", "Internal error", "unexpected server error", request.url.path)
