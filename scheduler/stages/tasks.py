"""Celery task bodies: thin wrappers that hand each message to its stage."""

from __future__ import annotations

from celery_batches import Batches, SimpleRequest

from ..runtime import current
from .celery_app import app
from .prepare import prepare
from .reaper import tick
from .running import run_batch
from .webhooks import deliver

__all__ = ["prepare_task", "generate_task", "webhook_task", "tick_task", "configure_batching"]


@app.task(name="xsd.prepare")
def prepare_task(job_id: str) -> None:
    """Moderation, references and routing for one job."""
    prepare(current(), job_id)


@app.task(name="xsd.generate", base=Batches, flush_every=8, flush_interval=0.5)
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
