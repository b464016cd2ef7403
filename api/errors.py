"""OpenAI-style error bodies for every failure: ``{"error": {message, type, param, code}}``.

Bad input of any kind (our checks, FastAPI's validation, unknown routes and methods) is a
4xx; Redis being unreachable (a restart) is a 503 that clients retry; only our own bugs
become a 500, and those never echo internals to the caller.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs.errors import JobsError

log = logging.getLogger(__name__)


class APIError(JobsError):
    """An HTTP-level refusal with an explicit status (401, 413, ...)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.status = status
        self.headers = headers


def error_response(
    status: int,
    message: str,
    *,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _jobs_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, JobsError)
    headers = exc.headers if isinstance(exc, APIError) else None
    return error_response(
        exc.status,
        exc.message,
        error_type=exc.error_type,
        param=exc.param,
        code=exc.code,
        headers=headers,
    )


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first["loc"] if p not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    return error_response(400, message, param=param, code="invalid_request")


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return error_response(
        exc.status_code,
        str(exc.detail),
        code=code,
        headers=getattr(exc, "headers", None),
    )


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("Redis unreachable on %s %s: %s", request.method, request.url.path, exc)
    return error_response(
        503,
        "the job store is unavailable; retry shortly",
        error_type="server_error",
        code="service_unavailable",
        headers={"Retry-After": "1"},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal server error", error_type="server_error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(JobsError, _jobs_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RedisConnectionError, _store_unavailable)
    app.add_exception_handler(RedisTimeoutError, _store_unavailable)
    app.add_exception_handler(Exception, _unexpected)
