"""The error body and the one place that maps exceptions to it.

Every error the API returns has the shape
``{"error": {"code": "...", "message": "...", "param": "<field or null>"}}``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from scheduler.errors import (
    AuthenticationFailed,
    Conflict,
    Forbidden,
    InsufficientBalance,
    InvalidRequest,
    NotFound,
    RateLimited,
    SchedulerError,
)
from scheduler.redis.outage import OUTAGE_ERRORS, RETRY_AFTER_SECONDS

__all__ = ["ApiError", "error_response", "install_handlers", "rate_limit_headers"]

log = logging.getLogger(__name__)

# Scheduler error class -> (HTTP status, error code); the first matching base class wins.
_STATUS: list[tuple[type[SchedulerError], int, str]] = [
    (AuthenticationFailed, 401, "authentication_error"),
    (Forbidden, 403, "authentication_error"),
    (InsufficientBalance, 402, "insufficient_balance"),
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
    (RateLimited, 429, "rate_limit_exceeded"),
    (InvalidRequest, 400, "validation_error"),
]


class ApiError(Exception):
    """An HTTP-level error raised by the shim itself (bad JSON, body too large, ...)."""

    def __init__(self, status: int, code: str, message: str, *, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A response in the spec's error format."""
    body: dict[str, Any] = {"error": {"code": code, "message": message, "param": param}}
    return JSONResponse(body, status_code=status, headers=headers)


def rate_limit_headers(*, limit: int, remaining: int, reset_seconds: int) -> dict[str, str]:
    """``X-RateLimit-*`` headers (Reset is seconds until the window rolls over)."""
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(reset_seconds),
    }


def _scheduler_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SchedulerError)
    for cls, status, code in _STATUS:
        if isinstance(exc, cls):
            headers = None
            if isinstance(exc, RateLimited):
                headers = {
                    "Retry-After": str(exc.retry_after),
                    **rate_limit_headers(
                        limit=exc.limit, remaining=0, reset_seconds=exc.retry_after
                    ),
                }
            if isinstance(exc, AuthenticationFailed):
                headers = {"WWW-Authenticate": "Bearer"}
            return error_response(status, code, exc.message, param=exc.param, headers=headers)
    log.error("unmapped scheduler error: %r", exc)
    return error_response(500, "internal_error", "An internal error occurred.")


def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, param=exc.param)


def _query_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("query", "path", "body")]
    param = ".".join(loc) or None
    message = f"{param or 'The request'}: {first.get('msg', 'is invalid')}."
    return error_response(400, "validation_error", message, param=param)


def _allowed_methods(request: Request) -> list[str]:
    # The router's 405 names the methods of the first route that matched the path only; a
    # path served by several routes (GET and POST /v1/generations) needs all of them.
    methods: set[str] = set()
    for context in iter_route_contexts(request.app.routes):
        route = context.original_route
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return error_response(404, "not_found", "No such endpoint.")
    if exc.status_code == 405:
        allowed = ", ".join(_allowed_methods(request))
        return error_response(
            405,
            "method_not_allowed",
            f"This method is not allowed here; use {allowed}.",
            headers={"Allow": allowed},  # RFC 9110 requires it with every 405
        )
    return error_response(exc.status_code, "validation_error", str(exc.detail))


def _outage(request: Request, exc: Exception) -> JSONResponse:
    # One log line per outage (not a traceback per request); the client retries.
    request.app.state.service.outage.failed(exc)
    return error_response(
        503,
        "service_unavailable",
        "The service is briefly unavailable: its database cannot be reached. Retry in a few "
        "seconds; a POST retried with the same Idempotency-Key is never charged twice.",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "An internal error occurred.")


def install_handlers(app: FastAPI) -> None:
    """Route every exception through the error format."""
    app.add_exception_handler(SchedulerError, _scheduler_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _query_validation)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for outage_error in OUTAGE_ERRORS:
        app.add_exception_handler(outage_error, _outage)
    app.add_exception_handler(Exception, _unexpected)
