"""Terminal transitions with their side effects, so no path forgets one.

Succeeding or failing a job also schedules its webhook; deleting one also removes its
objects. Stages and API calls use these functions rather than the store directly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from storage import StorageError

from .. import metrics
from ..jobs.objects import job_prefixes
from ..jobs.records import ImageResult, JobRecord
from ..jobs.sizes import size_class
from ..jobs.states import JobErrorCode, JobStatus
from ..jobs.store import Finish
from ..runtime import Runtime
from .celery_app import send_webhook

__all__ = ["WEBHOOK_GRACE_MS", "fail_job", "succeed_job", "delete_job", "delete_objects"]

log = logging.getLogger(__name__)

# A terminal transition puts the job's webhook in the due set this far ahead as a safety
# net, and queues a delivery at once; the delivery clears the entry. If the immediate send
# is lost (broker down, worker killed) the reaper tick delivers it after the grace period.
WEBHOOK_GRACE_MS = 30_000


def _notify(runtime: Runtime, record: JobRecord, finish: Finish) -> Finish:
    if finish.ok:
        metrics.XTOKENS_REFUNDED.inc(finish.refund)
    if finish.ok and record.webhook_url:
        try:
            send_webhook(record.id)
        except Exception:  # the due-set entry guarantees a later attempt
            log.warning("Could not queue the webhook of %s now; the tick will.", record.id)
    return finish


def fail_job(
    runtime: Runtime,
    record: JobRecord,
    code: JobErrorCode,
    message: str,
    *,
    attempt: int | None = None,
    only: Sequence[JobStatus] | None = None,
    cost: int = 0,
) -> Finish:
    """Fail a job (refunding all it was charged beyond ``cost``) and schedule its
    webhook."""
    finish = runtime.jobs.fail(
        record,
        code,
        message,
        attempt=attempt,
        only=only,
        cost=cost,
        webhook_at_ms=runtime.jobs.now_ms() + WEBHOOK_GRACE_MS,
    )
    if finish.ok:
        metrics.JOBS_FINISHED.labels("failed", code.value).inc()
        log.info("job %s failed: %s (refunded %d xTokens)", record.id, code.value, finish.refund)
    return _notify(runtime, record, finish)


def succeed_job(
    runtime: Runtime, record: JobRecord, attempt: int, images: Sequence[ImageResult]
) -> Finish:
    """Succeed a job (refunding unstored images) and schedule its webhook."""
    finish = runtime.jobs.succeed(
        record, attempt, images, webhook_at_ms=runtime.jobs.now_ms() + WEBHOOK_GRACE_MS
    )
    if finish.ok:
        metrics.JOBS_FINISHED.labels("succeeded", "none").inc()
        if record.width and record.height:
            elapsed = (runtime.jobs.now_ms() - record.created_ms) / 1000
            metrics.END_TO_END.labels(size_class(record.width, record.height)).observe(elapsed)
        log.info("job %s succeeded (refunded %d xTokens)", record.id, finish.refund)
    return _notify(runtime, record, finish)


def delete_objects(runtime: Runtime, record: JobRecord) -> None:
    """Remove every object of a job (images and references)."""
    for prefix in job_prefixes(record.account, record.id):
        runtime.store.delete_prefix(prefix)


def delete_job(runtime: Runtime, record: JobRecord) -> int:
    """Delete a job's objects, then its record; returns the refund of a non-terminal job.

    Objects go first: if this is interrupted, the record still points at what is left and a
    retry finishes the work, whereas the reverse order would leave orphans nobody lists.
    """
    try:
        delete_objects(runtime, record)
    except StorageError:
        log.exception("Could not delete the objects of %s; keeping its record.", record.id)
        raise
    refund = runtime.jobs.delete(record)
    metrics.XTOKENS_REFUNDED.inc(refund)
    return refund
