"""The package's exceptions and the API's error codes.

One hierarchy, shared by the server side (the shim answers an :class:`ApiError` in the
error format) and the client side (the client raises the :class:`ApiError` it was
answered)::

    XsdError                  base of every exception this package raises on purpose
    ├── ApiError              an error in the API's format: status, code, message, param
    ├── JobFailed             a generation ended failed or expired (every call succeeded)
    └── ImageUnavailable      an image item of a succeeded generation carries no data

Every error the API answers has the shape
``{"error": {"code": "...", "message": "...", "param": "<field or null>"}}``; its codes
are :class:`ErrorCode`, each answered with one HTTP status.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ErrorCode", "XsdError", "ApiError", "JobFailed", "ImageUnavailable"]


class ErrorCode(StrEnum):
    """The ``code`` of an error answer (the wire values), with its HTTP status."""

    VALIDATION_ERROR = "validation_error"
    AUTHENTICATION_ERROR = "authentication_error"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
    INTERNAL_ERROR = "internal_error"
    SERVICE_UNAVAILABLE = "service_unavailable"

    @property
    def status(self) -> int:
        """The HTTP status this code is answered with."""
        return _STATUS[self]


_STATUS = {
    ErrorCode.VALIDATION_ERROR: 400,
    ErrorCode.AUTHENTICATION_ERROR: 401,
    ErrorCode.INSUFFICIENT_BALANCE: 402,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.CONFLICT: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.RATE_LIMIT_EXCEEDED: 429,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.SERVICE_UNAVAILABLE: 503,
}


class XsdError(Exception):
    """Base of every exception this package raises on purpose: a ``code`` that says what
    went wrong and a ``message``, a full sentence for humans."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class ApiError(XsdError):
    """An error in the API's format. The shim raises one to answer it; the client raises
    the one it was answered.

    ``status`` is the code's own unless given: a client keeps what it was answered (codes
    it does not know included), and the server departs from a code's status only where
    the format has no code of its own (403 ``authentication_error`` for a signed URL).
    ``headers`` go with the answer (``Retry-After``, ``WWW-Authenticate``, ...).
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(code, message)
        self.status = ErrorCode(code).status if status is None else status
        self.param = param
        self.headers = headers


class JobFailed(XsdError):
    """A generation ended without images: ``code`` is its error code (``content_policy``,
    ``provider_timeout``, ...) or ``expired``; the record is kept for the caller."""

    def __init__(self, code: str, message: str, *, record: dict[str, object]) -> None:
        super().__init__(code, message)
        self.record = record


class ImageUnavailable(XsdError):
    """An image item with neither ``url`` nor ``b64Json``: its storage lost it."""
