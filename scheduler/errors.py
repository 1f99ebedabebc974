"""The scheduler's exceptions, one hierarchy.

::

    SchedulerError
    ├── AuthenticationFailed      no key, or a key that does not verify
    ├── Forbidden                 a signed file URL that is forged or expired
    ├── NotFound                  no such record for this account
    ├── Conflict                  the record's state forbids the operation
    ├── InsufficientBalance       the account cannot pay for the request
    ├── RateLimited               too many calls in the window
    ├── InvalidRequest            a field fails a check only the scheduler can make
    │   └── UnsafeURL             a URL that points at a private or unsupported target
    └── FetchFailed               a remote resource could not be fetched
        └── FetchTooLarge         ... because it exceeds the size cap

The HTTP shim maps each class to one status code and error code; workers map them to a
failed job's error code.
"""

from __future__ import annotations

__all__ = [
    "SchedulerError",
    "AuthenticationFailed",
    "Forbidden",
    "NotFound",
    "Conflict",
    "InsufficientBalance",
    "RateLimited",
    "InvalidRequest",
    "UnsafeURL",
    "FetchFailed",
    "FetchTooLarge",
]


class SchedulerError(Exception):
    """Base of every error the scheduler raises on purpose. Messages are full sentences."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class AuthenticationFailed(SchedulerError):
    """The request carries no API key, or one that does not verify."""


class Forbidden(SchedulerError):
    """A signed file URL whose signature does not verify or whose time has passed."""


class NotFound(SchedulerError):
    """No such record for this account (another account's records read as absent)."""


class Conflict(SchedulerError):
    """The record's current state does not allow the operation."""


class InsufficientBalance(SchedulerError):
    """The account's balance is below the request's cost."""

    def __init__(self, message: str, *, balance: int, cost: int) -> None:
        super().__init__(message)
        self.balance = balance
        self.cost = cost


class RateLimited(SchedulerError):
    """Too many calls in the current window."""

    def __init__(self, message: str, *, limit: int, retry_after: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after = retry_after


class InvalidRequest(SchedulerError):
    """A field that fails a check the scheduler makes (beyond schema validation)."""


class UnsafeURL(InvalidRequest):
    """A URL with a forbidden scheme, or a host that is or resolves to a non-public address."""


class FetchFailed(SchedulerError):
    """A remote resource could not be fetched (status, timeout, connection, decoding)."""


class FetchTooLarge(FetchFailed):
    """A remote resource is larger than the cap."""
