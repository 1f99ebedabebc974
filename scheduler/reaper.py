"""The beat's periodic tick: fail overdue jobs, dispatch due webhooks, purge old records.

Each step claims its items with an atomic removal or a state-checked script, so several
beat processes (or a beat restarted mid-tick) never act on one item twice.
"""

from __future__ import annotations

import logging

from storage import StorageError

from . import keys
from .celery_app import send_webhook
from .jobs import ACTIVE_STATUSES
from .lifecycle import delete_job, fail_job
from .runtime import Runtime
from .states import JobErrorCode

__all__ = ["tick", "reap_overdue", "dispatch_webhooks", "purge_expired"]

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
        "webhooks": dispatch_webhooks(runtime, now_ms),
        "purged": purge_expired(runtime, now_ms),
    }
    if any(done.values()):
        log.info("tick: %s", done)
    return done
