"""The one place that maps exceptions to the error format.

Every exception a request ends in becomes an :class:`~api_shim.exceptions.ApiError`, and
every ``ApiError`` is answered by :func:`error_response`; ``api_shim.exceptions`` draws the
hierarchy and holds the codes.
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

from scheduler import (
    OUTAGE_ERRORS,
    RETRY_AFTER_SECONDS,
    AuthenticationFailed,
    Conflict,
    Forbidden,
    InsufficientBalance,
    InvalidRequest,
    NotFound,
    RateLimited,
    SchedulerError,
)

from .exceptions import ApiError, ErrorCode

__all__ = ["as_api_error", "error_body", "error_response", "install_handlers", "rate_limit_headers"]

log = logging.getLogger(__name__)

# Scheduler error class -> error code; the first matching base class wins.
_CODES: list[tuple[type[SchedulerError], ErrorCode]] = [
    (AuthenticationFailed, ErrorCode.AUTHENTICATION_ERROR),
    (Forbidden, ErrorCode.AUTHENTICATION_ERROR),
    (InsufficientBalance, ErrorCode.INSUFFICIENT_BALANCE),
    (NotFound, ErrorCode.NOT_FOUND),
    (Conflict, ErrorCode.CONFLICT),
    (RateLimited, ErrorCode.RATE_LIMIT_EXCEEDED),
    (InvalidRequest, ErrorCode.VALIDATION_ERROR),
]
# A forged or expired signed URL is refused, not unauthenticated: the format has no code
# for 403, so it keeps authentication_error with a status of its own.
_FORBIDDEN_STATUS = 403
_INTERNAL = ApiError(ErrorCode.INTERNAL_ERROR, "An internal error occurred.")


def error_body(error: ApiError) -> dict[str, Any]:
    """``error`` in the spec's error format."""
    return {"error": {"code": str(error.code), "message": error.message, "param": error.param}}


def error_response(error: ApiError) -> JSONResponse:
    """The answer to ``error``, in the spec's error format."""
    return JSONResponse(error_body(error), status_code=error.status, headers=error.headers)


def rate_limit_headers(*, limit: int, remaining: int, reset_seconds: int) -> dict[str, str]:
    """``X-RateLimit-*`` headers (Reset is seconds until the window rolls over)."""
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(reset_seconds),
    }


def _headers_of(exc: SchedulerError) -> dict[str, str] | None:
    if isinstance(exc, RateLimited):
        return {
            "Retry-After": str(exc.retry_after),
            **rate_limit_headers(limit=exc.limit, remaining=0, reset_seconds=exc.retry_after),
        }
    if isinstance(exc, AuthenticationFailed):
        return {"WWW-Authenticate": "Bearer"}
    return None


def _from_scheduler(exc: SchedulerError) -> ApiError:
    code = next((code for cls, code in _CODES if isinstance(exc, cls)), None)
    if code is None:
        log.error("unmapped scheduler error: %r", exc)
        return _INTERNAL
    status = _FORBIDDEN_STATUS if isinstance(exc, Forbidden) else None
    return ApiError(code, exc.message, status=status, param=exc.param, headers=_headers_of(exc))


def _scheduler_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SchedulerError)
    return error_response(_from_scheduler(exc))


def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


def _query_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("query", "path", "body")]
    param = ".".join(loc) or None
    message = f"{param or 'The request'}: {first.get('msg', 'is invalid')}."
    return error_response(ApiError(ErrorCode.VALIDATION_ERROR, message, param=param))


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
        return error_response(ApiError(ErrorCode.NOT_FOUND, "No such endpoint."))
    if exc.status_code == 405:
        allowed = ", ".join(_allowed_methods(request))
        return error_response(
            ApiError(
                ErrorCode.METHOD_NOT_ALLOWED,
                f"This method is not allowed here; use {allowed}.",
                headers={"Allow": allowed},  # RFC 9110 requires it with every 405
            )
        )
    # Any other status the framework raises keeps its number.
    return error_response(
        ApiError(ErrorCode.VALIDATION_ERROR, str(exc.detail), status=exc.status_code)
    )


_UNAVAILABLE = ApiError(
    ErrorCode.SERVICE_UNAVAILABLE,
    "The service is briefly unavailable: its database cannot be reached. Retry in a "
    "few seconds; a POST retried with the same Idempotency-Key is never charged twice.",
    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
)


def _outage(request: Request, exc: Exception) -> JSONResponse:
    # One log line per outage (not a traceback per request); the client retries.
    request.app.state.service.outage.failed(exc)
    return error_response(_UNAVAILABLE)


def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(_INTERNAL)


def as_api_error(exc: Exception) -> ApiError:
    """The error ``exc`` is answered with, for where it can no longer set the status (an
    event stream already under way); logged as the handlers log it."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, SchedulerError):
        return _from_scheduler(exc)
    if isinstance(exc, OUTAGE_ERRORS):
        return _UNAVAILABLE
    log.exception("unhandled error", exc_info=exc)
    return _INTERNAL


def install_handlers(app: FastAPI) -> None:
    """Route every exception through the error format."""
    app.add_exception_handler(SchedulerError, _scheduler_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _query_validation)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for outage_error in OUTAGE_ERRORS:
        app.add_exception_handler(outage_error, _outage)
    app.add_exception_handler(Exception, _unexpected)
