"""Job states, their transitions, and the error codes a failed job can carry.

This module is the one place that says which status may follow which. The Redis scripts
that move a record between states take their allowed source states from here.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["JobStatus", "JobErrorCode", "InvalidTransition", "check_transition", "sources_of"]


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
