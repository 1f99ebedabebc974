"""Redis (records and broker) out of reach: which errors mean that, and one log line when
it goes and one when it comes back.

While Redis cannot be reached nothing with state can be done, so the API answers every
call ``503 service_unavailable`` with ``Retry-After`` (clients retry, reusing their
``Idempotency-Key``), and workers wait for it: these errors are an outage, not a bug, and
must neither become 500s nor fill the logs with a traceback per request.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from kombu.exceptions import OperationalError

__all__ = ["OUTAGE_ERRORS", "RETRY_AFTER_SECONDS", "Outage", "is_outage"]

log = logging.getLogger(__name__)

# Connection refused or reset, a timeout, a server still loading its AOF (BusyLoadingError
# is a ConnectionError), and kombu's wrapper of the same when publishing a message.
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    OperationalError,
)
# What a 503 asks clients to wait: a Redis restart takes seconds.
RETRY_AFTER_SECONDS = 5


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) says Redis is out of reach."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OUTAGE_ERRORS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class Outage:
    """Whether this process last found Redis unreachable; logs each change once."""

    def __init__(self, meanwhile: str, what: str = "Redis") -> None:
        self._what, self._meanwhile = what, meanwhile
        self._since: float | None = None
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """True between a failure and the next success."""
        return self._since is not None

    def failed(self, exc: BaseException) -> None:
        """A call failed for want of Redis: the first failure of an outage is logged."""
        with self._lock:
            if self._since is not None:
                return
            self._since = time.monotonic()
        log.error("%s is unreachable (%s); %s until it is back", self._what, exc, self._meanwhile)

    def succeeded(self) -> None:
        """A call went through: the end of an outage is logged, with its length."""
        if self._since is None:  # the common case, without taking the lock
            return
        with self._lock:
            if self._since is None:
                return
            lasted, self._since = time.monotonic() - self._since, None
        log.warning("%s is back after %.1f s", self._what, lasted)
