"""Terminal transitions with their side effects, so no path forgets one.

A :class:`Job` is a job on its way to a terminal state, obtained the way its caller holds
it: :meth:`Job.claimed` by the worker that claimed it, :meth:`Job.as_read` by whoever read
its record (the prepare stage, an API cancel), :meth:`Job.overdue` by the reaper. One
method per transition (``succeed``, ``fail``, ``cancel``, ``time_out``) records it, counts
it, logs it, schedules the webhook and words the refund, so no path forgets one. Deleting a
job also removes its objects. Stages and API calls use these rather than the store directly.
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
from .celery_app import job_queue, send_generate, send_webhook

__all__ = ["WEBHOOK_GRACE_MS", "Job", "delete_job", "delete_objects"]

log = logging.getLogger(__name__)

# A terminal transition puts the job's webhook in the due set this far ahead as a safety
# net, and queues a delivery at once; the delivery clears the entry. If the immediate send
# is lost (broker down, worker killed) the reaper tick delivers it after the grace period.
WEBHOOK_GRACE_MS = 30_000


def _refunded(reason: str) -> str:
    """A failed job's message: its reason, then that the request was refunded."""
    return f"{reason.rstrip('.')}; the request was refunded."


class Job:
    """A job and the claim its holder has on it: the transitions below change it only
    while it is in ``status`` (any the state machine allows when None) and, for a worker's
    job, only under the ``attempt`` that worker claimed."""

    def __init__(
        self,
        runtime: Runtime,
        record: JobRecord,
        *,
        status: JobStatus | None,
        attempt: int | None = None,
    ) -> None:
        self.runtime, self.record = runtime, record
        self.attempt, self._status = attempt, status

    @classmethod
    def claimed(cls, runtime: Runtime, record: JobRecord, attempt: int) -> Job:
        """The job as the worker that claimed it under ``attempt`` holds it: a worker whose
        lease was taken over can no longer change it."""
        return cls(runtime, record, status=JobStatus.PROCESSING, attempt=attempt)

    @classmethod
    def as_read(cls, runtime: Runtime, record: JobRecord) -> Job:
        """The job as long as it is still in the status ``record`` shows (a queued job a
        worker claims meanwhile is no longer this one's to change)."""
        return cls(runtime, record, status=record.status)

    @classmethod
    def overdue(cls, runtime: Runtime, record: JobRecord) -> Job:
        """The job whatever its active status or attempt (it is past its deadline)."""
        return cls(runtime, record, status=None)

    def succeed(self, images: Sequence[ImageResult]) -> Finish:
        """Succeed with these images; those that could not be stored are refunded."""
        record = self.record
        assert self.attempt is not None, "only the worker that claimed a job succeeds it"
        finish = self.runtime.jobs.succeed(
            record, self.attempt, images, webhook_at_ms=self._webhook_at()
        )
        if finish.ok:
            metrics.JOBS_FINISHED.labels(JobStatus.SUCCEEDED.value, "none").inc()
            if record.width and record.height:
                elapsed = (self.runtime.jobs.now_ms() - record.created_ms) / 1000
                metrics.END_TO_END.labels(size_class(record.width, record.height)).observe(elapsed)
            log.info("job %s succeeded (refunded %d xTokens)", record.id, finish.refund)
        return self._notify(finish)

    def fail(self, code: JobErrorCode, reason: str) -> Finish:
        """Fail with ``code``, refunding everything it was charged; ``reason`` is the
        client's message, which goes on to say the request was refunded."""
        return self._fail(code, _refunded(reason))

    def cancel(self) -> Finish:
        """The client cancelled the job: a queued one is refunded in full; one a worker
        claimed stops at its next denoising step and stays charged."""
        if self._status is JobStatus.QUEUED:
            return self.fail(
                JobErrorCode.CANCELLED, "Cancelled by the client before a worker took it"
            )
        assert self._status is JobStatus.PROCESSING, "a cancel knows whether a worker took it"
        charged = self.record.charged
        return self._fail(
            JobErrorCode.CANCELLED,
            "Cancelled by the client while it was generated; its work stopped and, since a "
            f"worker had claimed it, its {charged} xTokens are charged.",
            cost=charged,
        )

    def time_out(self) -> Finish:
        """Fail with ``provider_timeout``: the job outlived ``XSD_JOB_TIMEOUT_SECONDS``."""
        seconds = self.runtime.settings.job_timeout_seconds
        return self.fail(
            JobErrorCode.PROVIDER_TIMEOUT, f"The generation did not finish within {seconds} s"
        )

    def _fail(self, code: JobErrorCode, message: str, *, cost: int = 0) -> Finish:
        record = self.record
        finish = self.runtime.jobs.fail(
            record,
            code,
            message,
            attempt=self.attempt,
            only=None if self._status is None else (self._status,),
            cost=cost,
            webhook_at_ms=self._webhook_at(),
        )
        if finish.ok:
            metrics.JOBS_FINISHED.labels(JobStatus.FAILED.value, code.value).inc()
            log.info(
                "job %s failed: %s (refunded %d xTokens)", record.id, code.value, finish.refund
            )
        return self._notify(finish)

    def _webhook_at(self) -> int:
        return self.runtime.jobs.now_ms() + WEBHOOK_GRACE_MS

    def _notify(self, finish: Finish) -> Finish:
        if finish.ok:
            metrics.XTOKENS_REFUNDED.inc(finish.refund)
        if finish.ok and finish.freed_capped:
            _send_tokens(self.record, finish.freed_capped)
        if finish.ok and self.record.webhook_url:
            try:
                send_webhook(self.record.id)
            except Exception:  # the due-set entry guarantees a later attempt
                log.warning("Could not queue the webhook of %s now; the tick will.", self.record.id)
        return finish


def _send_tokens(record: JobRecord, count: int) -> None:
    """The job gave back ``count`` images in flight under its account's cap: its queue gets
    as many more messages, since picks that skipped that account's jobs spent the messages
    they came with (the outbox sends jobs still waiting again in any case)."""
    try:
        for _ in range(count):
            send_generate(record.id, job_queue(record))
    except Exception:
        log.warning("Could not send messages for %s's queue now.", record.id)


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
    if record.status is JobStatus.PROCESSING:
        cap = runtime.accounts.share(record.account).max_inflight_images
        if cap is not None:
            _send_tokens(record, record.image_count)
    return refund
