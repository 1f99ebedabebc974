"""Celery task bodies: thin wrappers that hand each message to its stage."""

from __future__ import annotations

from .celery_app import app
from .execution import generate
from .prepare import prepare
from .reaper import tick
from .runtime import current
from .webhooks import deliver

__all__ = ["prepare_task", "generate_task", "webhook_task", "tick_task"]


@app.task(name="xsd.prepare")
def prepare_task(job_id: str) -> None:
    """Moderation, references and routing for one job."""
    prepare(current(), job_id)


@app.task(name="xsd.generate")
def generate_task(job_id: str) -> None:
    """Generate one job's images on this (GPU) worker."""
    generate(current(), job_id)


@app.task(name="xsd.webhook")
def webhook_task(job_id: str) -> None:
    """One webhook delivery attempt."""
    deliver(current(), job_id)


@app.task(name="xsd.tick")
def tick_task() -> None:
    """The reaper's periodic pass."""
    tick(current())
