"""The state machine: the one table every transition is checked against."""

from __future__ import annotations

import pytest

from scheduler.jobs.states import InvalidTransition, JobStatus, check_transition, sources_of
from scheduler.jobs.store import ACTIVE_STATUSES


def test_allowed_paths() -> None:
    check_transition(JobStatus.QUEUED, JobStatus.PROCESSING)
    check_transition(JobStatus.QUEUED, JobStatus.FAILED)
    check_transition(JobStatus.PROCESSING, JobStatus.SUCCEEDED)
    check_transition(JobStatus.PROCESSING, JobStatus.FAILED)
    check_transition(JobStatus.PROCESSING, JobStatus.PROCESSING)  # lease takeover


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (JobStatus.QUEUED, JobStatus.SUCCEEDED),
        (JobStatus.SUCCEEDED, JobStatus.FAILED),
        (JobStatus.FAILED, JobStatus.SUCCEEDED),
        (JobStatus.FAILED, JobStatus.QUEUED),
        (JobStatus.SUCCEEDED, JobStatus.EXPIRED),
    ],
)
def test_forbidden_paths(current: JobStatus, target: JobStatus) -> None:
    with pytest.raises(InvalidTransition):
        check_transition(current, target)


def test_sources() -> None:
    assert sources_of(JobStatus.SUCCEEDED) == (JobStatus.PROCESSING,)
    assert sources_of(JobStatus.FAILED) == (JobStatus.QUEUED, JobStatus.PROCESSING)


def test_terminal_and_active_partition_the_states() -> None:
    assert {s for s in JobStatus if not s.is_terminal()} == set(ACTIVE_STATUSES)
