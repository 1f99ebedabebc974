"""The beat's tick against real Redis: overdue jobs, due webhooks, retention purge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from scheduler.jobs.records import JobRecord
from scheduler.jobs.states import JobErrorCode, JobStatus
from scheduler.redis import keys
from scheduler.runtime import Runtime
from scheduler.stages.celery_app import CPU_QUEUE
from scheduler.stages.reaper import tick

from .factories import accept as store
from .factories import funded_runtime, job_record, route


@pytest.fixture
def runtime(redis_url: str, tmp_path: Path) -> Runtime:
    return funded_runtime(redis_url, tmp_path, credits=100)


def accept(
    rt: Runtime,
    *,
    deadline_ms: int,
    purge_ms: int,
    webhook: bool = False,
    dispatch_at_ms: int | None = None,
) -> JobRecord:
    record = job_record(
        image_count=3,
        created_ms=rt.jobs.now_ms(),
        webhook_url="https://hooks.your-product.com/x" if webhook else None,
    )
    store(
        rt.jobs, record, deadline_ms=deadline_ms, purge_ms=purge_ms, dispatch_at_ms=dispatch_at_ms
    )
    return record


def queued_tasks(client: redis.Redis) -> list[str]:
    return [json.loads(m)["headers"]["task"] for m in client.lrange(CPU_QUEUE, 0, -1)]


def test_overdue_job_fails_with_timeout_and_refund(runtime: Runtime) -> None:
    now = runtime.jobs.now_ms()
    record = accept(runtime, deadline_ms=now - 1, purge_ms=now + 10**9, webhook=True)
    runtime.jobs.claim(record.id, lease_ms=60_000)  # a worker that went silent
    assert runtime.accounts.info("acme")["balance"] == 70
    assert tick(runtime)["reaped"] == 1
    stored = runtime.jobs.get(record.id)
    assert stored is not None and stored.status is JobStatus.FAILED
    assert stored.error is not None and stored.error["code"] == "provider_timeout"
    assert runtime.accounts.info("acme")["balance"] == 100
    assert queued_tasks(runtime.redis) == ["xsd.webhook"], "the failure notifies at once"
    assert tick(runtime)["reaped"] == 0, "a second tick changes nothing"
    assert runtime.accounts.info("acme")["balance"] == 100


def test_job_inside_its_deadline_is_left_alone(runtime: Runtime) -> None:
    now = runtime.jobs.now_ms()
    record = accept(runtime, deadline_ms=now + 60_000, purge_ms=now + 10**9)
    assert tick(runtime)["reaped"] == 0
    assert runtime.jobs.get(record.id).status is JobStatus.QUEUED  # type: ignore[union-attr]


def test_due_webhooks_are_dispatched_once(runtime: Runtime) -> None:
    runtime.jobs.schedule(keys.WEBHOOKS_DUE, "req_due", runtime.jobs.now_ms() - 5)
    runtime.jobs.schedule(keys.WEBHOOKS_DUE, "req_later", runtime.jobs.now_ms() + 60_000)
    assert tick(runtime)["webhooks"] == 1
    assert tick(runtime)["webhooks"] == 0
    assert queued_tasks(runtime.redis) == ["xsd.webhook"]
    assert runtime.redis.zscore(keys.WEBHOOKS_DUE, "req_later") is not None


def test_purge_removes_record_and_objects(runtime: Runtime) -> None:
    now = runtime.jobs.now_ms()
    record = accept(runtime, deadline_ms=now + 60_000, purge_ms=now - 1)
    key = f"images/acme/{record.id}/0.png"
    runtime.store.put(key, b"png", content_type="image/png")
    assert tick(runtime)["purged"] == 1
    assert runtime.jobs.get(record.id) is None
    assert runtime.store.delete_prefix(f"images/acme/{record.id}/") == 0
    assert runtime.redis.zcard(keys.account_jobs("acme")) == 0


def test_stale_lease_is_redispatched_once_per_lease(runtime: Runtime) -> None:
    now = runtime.jobs.now_ms()
    record = accept(runtime, deadline_ms=now + 600_000, purge_ms=now + 10**9)
    runtime.jobs.claim(record.id, lease_ms=1)  # a worker that died right after claiming
    runtime.redis.zadd(keys.LEASES, {record.id: now - 10})
    assert tick(runtime)["redispatched"] == 1
    assert [
        json.loads(m)["headers"]["task"] for m in runtime.redis.lrange("gpu.xsd45.2k", 0, -1)
    ] == ["xsd.generate"]
    assert tick(runtime)["redispatched"] == 0, "not again within the lease period"
    runtime.jobs.fail(record, JobErrorCode.PROVIDER_ERROR, "x", webhook_at_ms=None)
    assert runtime.redis.zscore(keys.LEASES, record.id) is None, "finishing clears the lease"


def test_a_job_the_api_never_sent_is_sent_by_the_outbox(runtime: Runtime) -> None:
    """The API died between the debit and the enqueue: the job must still run."""
    now = runtime.jobs.now_ms()
    record = accept(runtime, deadline_ms=now + 600_000, purge_ms=now + 10**9, dispatch_at_ms=now)
    assert queued_tasks(runtime.redis) == []
    assert tick(runtime)["unclaimed"] == 1
    assert queued_tasks(runtime.redis) == ["xsd.prepare"], "not prepared yet: from the start"
    assert tick(runtime)["unclaimed"] == 0, "then it waits twice the retry period"
    retry_ms = runtime.settings.dispatch_retry_seconds * 1000
    resend_at = runtime.redis.zscore(keys.DISPATCH, record.id)
    assert resend_at is not None and resend_at >= now + 2 * retry_ms
    assert runtime.jobs.get(record.id).dispatches == 1  # type: ignore[union-attr]


def test_a_prepared_job_whose_message_was_lost_goes_back_to_its_gpu_queue(
    runtime: Runtime,
) -> None:
    now = runtime.jobs.now_ms()
    record = accept(runtime, deadline_ms=now + 600_000, purge_ms=now + 10**9, dispatch_at_ms=now)
    route(runtime.jobs, record, prepared_ms=str(now))
    assert tick(runtime)["unclaimed"] == 1
    assert [
        json.loads(m)["headers"]["task"] for m in runtime.redis.lrange("gpu.xsd45.2k", 0, -1)
    ] == ["xsd.generate"]


def test_claimed_and_finished_jobs_leave_the_outbox(runtime: Runtime) -> None:
    now = runtime.jobs.now_ms()
    claimed = accept(runtime, deadline_ms=now + 600_000, purge_ms=now + 10**9, dispatch_at_ms=now)
    runtime.jobs.claim(claimed.id, lease_ms=60_000)
    # A stale entry (the tick rescheduled it just as a worker claimed it) is dropped.
    runtime.redis.zadd(keys.DISPATCH, {claimed.id: now})
    assert tick(runtime)["unclaimed"] == 0
    assert runtime.redis.zcard(keys.DISPATCH) == 0
    assert queued_tasks(runtime.redis) == []


def test_a_failing_duty_does_not_stop_the_others(runtime: Runtime, monkeypatch) -> None:
    import scheduler.stages.reaper as reaper

    def broken(rt: Runtime, now_ms: int) -> int:
        raise redis.ConnectionError("Redis went away mid-tick")

    monkeypatch.setitem(reaper._DUTIES, "reaped", broken)
    runtime.jobs.schedule(keys.WEBHOOKS_DUE, "req_due", runtime.jobs.now_ms() - 5)
    done = tick(runtime)
    assert done["reaped"] == -1 and done["webhooks"] == 1
