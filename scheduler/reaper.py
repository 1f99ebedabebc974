"""The beat's periodic tick: fail overdue jobs, dispatch due webhooks, purge old records.

Each step claims its items with an atomic removal or a state-checked script, so several
beat processes (or a beat restarted mid-tick) never act on one item twice.
"""

from __future__ import annotations

import logging

from storage import StorageError

from . import keys
from .celery_app import gpu_queue, send_generate, send_webhook
from .jobs import ACTIVE_STATUSES
from .lifecycle import delete_job, fail_job
from .runtime import Runtime
from .sizes import size_class
from .states import JobErrorCode, JobStatus

__all__ = ["tick", "reap_overdue", "redispatch_stale", "dispatch_webhooks", "purge_expired"]

log = logging.getLogger(__name__)


def reap_overdue(runtime: Runtime, now_ms: int) -> int:
    """Fail, with ``provider_timeout`` and a refund, every job past its deadline."""
    count = 0
    for job_id in runtime.jobs.due(keys.ACTIVE, now_ms=now_ms):
        record = runtime.jobs.get(job_id)
        if record is None or record.status not in ACTIVE_STATUSES:
            runtime.jobs.take_due(keys.ACTIVE, job_id)
            continue
        finish = fail_job(
            runtime,
            record,
            JobErrorCode.PROVIDER_TIMEOUT,
            f"The generation did not finish within {runtime.settings.job_timeout_seconds} s; "
            "the request was refunded.",
        )
        count += int(finish.ok)
    return count


def redispatch_stale(runtime: Runtime, now_ms: int) -> int:
    """Queue again the processing jobs whose worker stopped renewing its lease (it died
    or hung): a live worker will take them over under a new attempt number. Each stale
    job is re-sent at most once per lease period."""
    count = 0
    lease_ms = runtime.settings.lease_seconds * 1000
    for job_id in runtime.jobs.due(keys.LEASES, now_ms=now_ms):
        record = runtime.jobs.get(job_id)
        if record is None or record.status is not JobStatus.PROCESSING or not record.width:
            runtime.jobs.take_due(keys.LEASES, job_id)
            continue
        assert record.height is not None
        runtime.jobs.schedule(keys.LEASES, job_id, now_ms + lease_ms)
        send_generate(job_id, gpu_queue(record.model, size_class(record.width, record.height)))
        log.warning("re-dispatched %s: its worker's lease ran out", job_id)
        count += 1
    return count


def dispatch_webhooks(runtime: Runtime, now_ms: int) -> int:
    """Queue the webhook deliveries whose time has come."""
    count = 0
    for job_id in runtime.jobs.due(keys.WEBHOOKS_DUE, now_ms=now_ms):
        if runtime.jobs.take_due(keys.WEBHOOKS_DUE, job_id):
            send_webhook(job_id)
            count += 1
    return count


def purge_expired(runtime: Runtime, now_ms: int) -> int:
    """Delete records (and objects) past the retention period."""
    count = 0
    for job_id in runtime.jobs.due(keys.PURGE, now_ms=now_ms):
        record = runtime.jobs.get(job_id)
        if record is None:
            runtime.jobs.take_due(keys.PURGE, job_id)
            continue
        try:
            delete_job(runtime, record)
        except StorageError:
            continue  # logged by delete_job; the next tick retries
        count += 1
    return count


def tick(runtime: Runtime) -> dict[str, int]:
    """One pass of every periodic duty."""
    now_ms = runtime.jobs.now_ms()
    done = {
        "reaped": reap_overdue(runtime, now_ms),
        "redispatched": redispatch_stale(runtime, now_ms),
        "webhooks": dispatch_webhooks(runtime, now_ms),
        "purged": purge_expired(runtime, now_ms),
    }
    if any(done.values()):
        log.info("tick: %s", done)
    return done
