"""Job states, their transitions, the error codes a failed job or image can carry, and the
outcomes of the store's atomic changes and of webhook deliveries.

This module is the one place that says which status may follow which. The Redis scripts
that move a record between states take their allowed source states from here. Every
outcome is a ``StrEnum`` whose values are the strings stored in Redis or sent in JSON, so
typing them changes no stored or public byte.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "JobStatus",
    "JobErrorCode",
    "ImageErrorCode",
    "ClaimOutcome",
    "FinishOutcome",
    "WebhookState",
    "InvalidTransition",
    "check_transition",
    "sources_of",
]


class JobStatus(StrEnum):
    """Lifecycle of a generation. ``EXPIRED`` is never stored: it is how a ``SUCCEEDED``
    record older than the URL lifetime reads."""

    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"

    def is_terminal(self) -> bool:
        """True once the job will not change any more (bar purging)."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.EXPIRED)


class JobErrorCode(StrEnum):
    """Codes in a failed job's ``error`` (the spec's list, plus ``cancelled``)."""

    VALIDATION_ERROR = "validation_error"
    CONTENT_POLICY = "content_policy"
    PROVIDER_ERROR = "provider_error"
    PROVIDER_TIMEOUT = "provider_timeout"
    INTERNAL_ERROR = "internal_error"
    # Not in the spec's list: a client cancelled the job before a worker took it.
    CANCELLED = "cancelled"


class ImageErrorCode(StrEnum):
    """Codes in the ``error`` of one image of a succeeded job."""

    # The image was generated but could not be stored within the retry bound (refunded).
    STORAGE_FAILED = "storage_failed"


class ClaimOutcome(StrEnum):
    """What a worker's claim of a job found (the strings ``claim.lua`` returns)."""

    CLAIMED = "claimed"
    # Another worker holds a lease that has not run out: it is working on the job.
    BUSY = "busy"
    TERMINAL = "terminal"
    GONE = "gone"


class FinishOutcome(StrEnum):
    """What a terminal transition did (the strings ``finish.lua`` returns)."""

    OK = "ok"
    # The job had moved on, or belongs to another attempt: nothing changed.
    STALE = "stale"
    GONE = "gone"


class WebhookState(StrEnum):
    """Delivery progress of a job's webhook. ``RETRYING`` is stored with the last
    attempt's outcome after it (``retrying: http 503``); :meth:`read` parses either."""

    PENDING = ""
    RETRYING = "retrying"
    DELIVERED = "delivered"
    GAVE_UP = "gave_up"

    def is_final(self) -> bool:
        """True once no delivery will be attempted any more."""
        return self in (WebhookState.DELIVERED, WebhookState.GAVE_UP)

    @classmethod
    def read(cls, stored: str) -> WebhookState:
        """The state of a stored ``webhook_state`` field."""
        return cls(stored.partition(":")[0])

    def stored(self, detail: str = "") -> str:
        """The field's value for this state, with ``detail`` (the last outcome) if any."""
        return f"{self.value}: {detail}" if detail else self.value


# processing -> processing: a worker takes over a job whose claimant stopped renewing its
# lease (it crashed); the attempt counter, not the status, tells the stale worker apart.
_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.PROCESSING, JobStatus.FAILED}),
    JobStatus.PROCESSING: frozenset({JobStatus.PROCESSING, JobStatus.SUCCEEDED, JobStatus.FAILED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.EXPIRED: frozenset(),
}


class InvalidTransition(Exception):
    """A status change the state machine does not allow."""


def check_transition(current: JobStatus, target: JobStatus) -> None:
    """Raise ``InvalidTransition`` unless ``current -> target`` is allowed."""
    if target not in _TRANSITIONS[current]:
        raise InvalidTransition(f"A {current.value} job cannot become {target.value}.")


def sources_of(target: JobStatus) -> tuple[JobStatus, ...]:
    """Every status from which ``target`` may be reached, in a stable order."""
    return tuple(s for s in JobStatus if target in _TRANSITIONS[s])
