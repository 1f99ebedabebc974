"""The beat's periodic tick: fail overdue jobs, send again the jobs no worker has claimed
or whose worker died, dispatch due webhooks, purge old records.

Each step claims its items with an atomic removal or a state-checked script, so several
beat processes (or a beat restarted mid-tick) never act on one item twice. A step that
raises (Redis blinked, an object store is down) is logged and the others still run; the
next tick retries.
"""

from __future__ import annotations

import logging

from storage import StorageError

from ..jobs.states import JobStatus
from ..jobs.store import ACTIVE_STATUSES
from ..redis import keys
from ..runtime import Runtime
from .celery_app import job_queue, send_generate, send_prepare, send_webhook
from .lifecycle import Job, delete_job

__all__ = [
    "tick",
    "reap_overdue",
    "redispatch_unclaimed",
    "redispatch_stale",
    "dispatch_webhooks",
    "purge_expired",
]

log = logging.getLogger(__name__)


def reap_overdue(runtime: Runtime, now_ms: int) -> int:
    """Fail, with ``provider_timeout`` and a refund, every job past its deadline."""
    count = 0
    for job_id in runtime.jobs.due(keys.ACTIVE, now_ms=now_ms):
        record = runtime.jobs.get(job_id)
        if record is None or record.status not in ACTIVE_STATUSES:
            runtime.jobs.take_due(keys.ACTIVE, job_id)
            continue
        count += int(Job.overdue(runtime, record).time_out().ok)
    return count


def redispatch_unclaimed(runtime: Runtime, now_ms: int) -> int:
    """Send again the queued jobs in the outbox whose time has come: their first message
    was never sent (the API died after the debit) or was lost (a broker restart), or no
    worker took it in ``XSD_DISPATCH_RETRY_SECONDS``. Each one goes to the stage it is at
    (prepare, or its GPU queue) and waits twice as long before the next sending; a
    duplicate message is harmless, since claims are idempotent. A prepared job is put in
    its queue's fair order first if it is not there (prepared by an older version)."""
    count = 0
    retry_ms = runtime.settings.dispatch_retry_seconds * 1000
    for job_id in runtime.jobs.due(keys.DISPATCH, now_ms=now_ms):
        if not runtime.jobs.take_due(keys.DISPATCH, job_id):
            continue  # another beat took it
        record = runtime.jobs.get(job_id)
        if record is None or record.status is not JobStatus.QUEUED:
            continue
        sends = runtime.jobs.count_dispatch(job_id)
        runtime.jobs.schedule(keys.DISPATCH, job_id, now_ms + int(retry_ms * 2**sends))
        if record.prepared_ms is None:
            send_prepare(job_id)
        elif runtime.jobs.enqueue(record, job_queue(record), {}):
            send_generate(job_id, job_queue(record))
        log.warning("sent %s again: no worker had claimed it (sending %d)", job_id, sends)
        count += 1
    return count


def redispatch_stale(runtime: Runtime, now_ms: int) -> int:
    """Queue again the processing jobs whose worker stopped renewing its lease (it died
    or hung): each goes back to the front of its queue's fair order, and a live worker
    takes it over under a new attempt number. Each stale job is re-sent at most once per
    lease period."""
    count = 0
    lease_ms = runtime.settings.lease_seconds * 1000
    for job_id in runtime.jobs.due(keys.LEASES, now_ms=now_ms):
        record = runtime.jobs.get(job_id)
        if record is None or record.status is not JobStatus.PROCESSING or not record.width:
            runtime.jobs.take_due(keys.LEASES, job_id)
            continue
        runtime.jobs.schedule(keys.LEASES, job_id, now_ms + lease_ms)
        if not runtime.jobs.requeue(job_id, job_queue(record)):
            continue  # renewed or finished meanwhile
        send_generate(job_id, job_queue(record))
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


_DUTIES = {
    "reaped": reap_overdue,
    "unclaimed": redispatch_unclaimed,
    "redispatched": redispatch_stale,
    "webhooks": dispatch_webhooks,
    "purged": purge_expired,
}


def tick(runtime: Runtime) -> dict[str, int]:
    """One pass of every periodic duty; a duty that fails counts -1 and the others run."""
    now_ms = runtime.jobs.now_ms()
    done: dict[str, int] = {}
    for name, duty in _DUTIES.items():
        try:
            done[name] = duty(runtime, now_ms)
        except Exception:
            log.exception("the tick's %s step failed; the next tick retries", name)
            done[name] = -1
    if any(done.values()):
        log.info("tick: %s", done)
    return done
