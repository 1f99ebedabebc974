"""The state machine: the one table every transition is checked against; and the other
outcome enums, whose values are the bytes stored in Redis."""

from __future__ import annotations

import re

import pytest

from scheduler.jobs.states import (
    ClaimOutcome,
    FinishOutcome,
    InvalidTransition,
    JobStatus,
    WebhookState,
    check_transition,
    sources_of,
)
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


def test_webhook_states_read_back_as_stored() -> None:
    stored = WebhookState.RETRYING.stored("http 503")
    assert stored == "retrying: http 503"
    assert WebhookState.read(stored) is WebhookState.RETRYING
    assert WebhookState.read("") is WebhookState.PENDING and not WebhookState.PENDING.is_final()
    assert WebhookState.read(WebhookState.GAVE_UP.stored()).is_final()


# A claim's outcomes are returned by claim_job, shared by claim.lua and pick.lua.
@pytest.mark.parametrize("script", ["_shared", "finish"])
def test_every_outcome_a_script_returns_is_an_enum_value(script: str) -> None:
    from pathlib import Path

    import scheduler.redis

    enum = {"_shared": ClaimOutcome, "finish": FinishOutcome}[script]
    lua = (Path(scheduler.redis.__file__).parent / "lua" / f"{script}.lua").read_text()
    returned = set(re.findall(r"return \{'(\w+)'", lua))
    assert returned == {outcome.value for outcome in enum}
