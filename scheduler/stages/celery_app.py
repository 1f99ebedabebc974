"""The Celery application: queues, routing and reliability settings.

Queues: ``cpu`` (prepare, webhooks, the reaper tick) and one GPU queue per model and size
class, ``gpu.<model>.<2k|4k>``, so operators can give 4K work its own (larger) GPUs and
scale each queue on its own length. Tasks are sent by name, so the API process never
imports the worker code (or torch).
"""

from __future__ import annotations

import re

from celery import Celery

from ..jobs.records import JobRecord
from ..jobs.sizes import size_class
from ..settings import Settings

__all__ = [
    "app",
    "CPU_QUEUE",
    "SIZE_CLASSES",
    "configure",
    "gpu_queue",
    "gpu_queues",
    "job_queue",
    "send_prepare",
    "send_generate",
    "send_webhook",
]

CPU_QUEUE = "cpu"
SIZE_CLASSES = ("2k", "4k")

app = Celery("xsd", include=["scheduler.stages.tasks"])


def _slug(alias: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", alias.lower())


def gpu_queue(model: str, size_class: str) -> str:
    """The GPU queue for a model alias and a size class."""
    return f"gpu.{_slug(model)}.{size_class}"


def job_queue(record: JobRecord) -> str:
    """The GPU queue of a prepared job (one whose pixels are known)."""
    assert record.width is not None and record.height is not None
    return gpu_queue(record.model, size_class(record.width, record.height))


def gpu_queues(models: list[str]) -> list[str]:
    """Every GPU queue of these models."""
    return [gpu_queue(model, size) for model in models for size in SIZE_CLASSES]


def configure(settings: Settings, redis_url: str) -> Celery:
    """Point the app at the broker and set the reliability options."""
    if app.conf.broker_url not in (None, redis_url):
        # Pointed at another broker (only tests do this): connection and producer pools
        # built for the old one must not be reused. Celery has no public call for it.
        app.close()
        app.amqp._producer_pool = None
    app.conf.update(
        broker_url=redis_url,
        broker_connection_retry_on_startup=True,
        # Messages are acknowledged after the task body returns, so a worker that dies
        # mid-job leaves its message to be redelivered after the visibility timeout;
        # execution is idempotent (claims carry attempt numbers).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout,
            # kombu scans for expired unacked messages every interval x throttle seconds,
            # 10 x 10 by default: a crashed worker's jobs would wait 100 s on top of the
            # visibility timeout. One cheap ZRANGE per scan buys recovery in a quarter of it.
            "unacked_restore_interval": max(1, min(10, settings.broker_visibility_timeout // 4)),
            "unacked_restore_throttle": 1,
        },
        task_ignore_result=True,
        task_default_queue=CPU_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        beat_schedule={
            "tick": {
                "task": "xsd.tick",
                "schedule": settings.tick_seconds,
                "options": {"queue": CPU_QUEUE, "expires": settings.tick_seconds * 4},
            }
        },
    )
    return app


def send_prepare(job_id: str) -> None:
    """Queue the CPU-side preparation of a job."""
    app.send_task("xsd.prepare", args=[job_id], queue=CPU_QUEUE)


def send_generate(job_id: str, queue: str) -> None:
    """Send a GPU queue one message for a job waiting in it. The message is a token: the
    worker that gets it takes the fairest job waiting in the queue, which may be another
    (see :meth:`scheduler.jobs.store.JobStore.pick`)."""
    app.send_task("xsd.generate", args=[job_id], queue=queue)


def send_webhook(job_id: str) -> None:
    """Queue a webhook delivery attempt."""
    app.send_task("xsd.webhook", args=[job_id], queue=CPU_QUEUE)
