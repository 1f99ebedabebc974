"""No exception leaves a job non-terminal: each stage, in process against real Redis, with
one of its steps made to raise something nobody planned for. (The GPU stage's cases are in
test_execution.py, next to its fixtures.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.jobs.states import JobErrorCode, JobStatus
from scheduler.redis import keys
from scheduler.runtime import Runtime
from scheduler.stages.prepare import prepare
from scheduler.stages.webhooks import deliver

from .factories import accept, funded_runtime, job_record


@pytest.fixture
def runtime(redis_url: str, tmp_path: Path) -> Runtime:
    return funded_runtime(redis_url, tmp_path, credits=100)


def balance(rt: Runtime) -> int:
    return int(rt.accounts.info("acme")["balance"])


def test_an_unexpected_exception_in_prepare_fails_and_refunds(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(prompt: str):
        raise ZeroDivisionError("a bug in moderation")

    monkeypatch.setattr(runtime.moderator, "check", broken)
    record = job_record(image_count=3, created_ms=runtime.jobs.now_ms())
    accept(runtime.jobs, record)
    assert balance(runtime) == 70
    prepare(runtime, record.id)
    stored = runtime.jobs.get(record.id)
    assert stored is not None and stored.status is JobStatus.FAILED
    assert stored.error is not None and stored.error["code"] == "internal_error"
    assert balance(runtime) == 100
    assert runtime.redis.zscore(keys.DISPATCH, record.id) is None, "nothing left to send"


def test_an_unexpected_exception_while_delivering_keeps_the_webhook_due(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scheduler.stages.webhooks as webhooks

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the transport")

    monkeypatch.setattr(webhooks, "post", broken)
    record = job_record(created_ms=runtime.jobs.now_ms(), webhook_url="https://hooks.x.com/h")
    accept(runtime.jobs, record)
    runtime.jobs.fail(record, JobErrorCode.PROVIDER_ERROR, "x", webhook_at_ms=12_345)
    with pytest.raises(RuntimeError):
        deliver(runtime, record.id)
    assert runtime.redis.zscore(keys.WEBHOOKS_DUE, record.id) == 12_345, "the tick retries it"
    assert runtime.redis.get(keys.webhook_lock(record.id)) is None, "and nothing holds it"
