"""Celery task bodies: thin wrappers that hand each message to its stage."""

from __future__ import annotations

from celery_batches import Batches, SimpleRequest

from ..runtime import current
from .celery_app import app
from .prepare import prepare
from .reaper import tick
from .running import run_batch
from .webhooks import deliver

__all__ = [
    "GpuBatches",
    "prepare_task",
    "generate_task",
    "webhook_task",
    "tick_task",
    "configure_batching",
]


@app.task(name="xsd.prepare")
def prepare_task(job_id: str) -> None:
    """Moderation, references and routing for one job."""
    prepare(current(), job_id)


class GpuBatches(Batches):
    """celery-batches, with a batch's wait to fill counted from its own first job.

    celery-batches flushes on every ``flush_every``-th message and on a timer that repeats
    every ``flush_interval`` from the first message of all. In the GPU worker's solo pool a
    flush runs the batch inside the consumer's loop, so once a pass longer than the
    interval returns, the timer is overdue and fires at the loop's next turn: the next
    batch left with the first one or two of the jobs waiting in the queue, and the pass
    after it with the rest (two passes, two claims, twice the gaps, for one batch's work).
    Stopping the timer after each flush makes the next job to arrive start a new one."""

    def _do_flush(self) -> None:
        super()._do_flush()
        # Nothing is ever deferred to a later flush here: GPU messages carry no ETA.
        if self._tref is not None and self._pending.qsize() == 0:
            self._tref.cancel()
            self._tref = None


@app.task(name="xsd.generate", base=GpuBatches, flush_every=8, flush_interval=0.5)
def generate_task(requests: list[SimpleRequest]) -> None:
    """Generate the images of a batch of jobs on this (GPU) worker. The batch size and
    wait are set from the settings when the worker starts (``configure_batching``)."""
    run_batch(current(), [request.args[0] for request in requests])


def configure_batching(*, max_jobs: int, wait_seconds: float) -> None:
    """Apply ``XSD_BATCH_MAX_JOBS`` and ``XSD_BATCH_WAIT_SECONDS`` to the batch task."""
    generate_task.flush_every = max_jobs
    generate_task.flush_interval = wait_seconds


@app.task(name="xsd.webhook")
def webhook_task(job_id: str) -> None:
    """One webhook delivery attempt."""
    deliver(current(), job_id)


@app.task(name="xsd.tick")
def tick_task() -> None:
    """The reaper's periodic pass."""
    tick(current())
