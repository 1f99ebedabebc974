"""Entry points of the worker and beat processes."""

from __future__ import annotations

import logging
import sys
from functools import partial

from celery.signals import worker_ready
from celery.worker.consumer import Consumer

from .. import metrics
from ..runtime import Runtime, init
from ..settings import Settings
from ..stages.celery_app import CPU_QUEUE, app, gpu_queues
from . import health
from .allocator import return_large_frees

__all__ = ["EXIT_MODEL_UNAVAILABLE", "expand_queues", "run_worker", "run_beat", "drain"]

log = logging.getLogger(__name__)

# Exit status of a GPU worker whose model cannot be loaded (EX_CONFIG): it exits before
# consuming anything, so its queue's jobs wait for a worker that can run them.
EXIT_MODEL_UNAVAILABLE = 78


def expand_queues(spec: str, models: list[str]) -> list[str]:
    """Queue names from ``--queues``: ``gpu`` stands for every GPU queue of every model."""
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if part == "gpu":
            names += gpu_queues(models)
        elif part:
            names.append(part)
    return list(dict.fromkeys(names))


def _preload(runtime: Runtime, queues: list[str]) -> None:
    """Load the models of these queues, and warm them up (``XSD_WARMUP_SIZES``), before
    consuming anything and before /readyz says ready, so the first job does not pay for
    it and a model that cannot load or run (missing weights, a missing package, a fast-path
    option this GPU lacks) stops the worker with :data:`EXIT_MODEL_UNAVAILABLE` instead of
    holding jobs it cannot run."""
    from ..stages.running import generator_for, warm_up

    for alias in runtime.registry.aliases():
        if not any(q in queues for q in gpu_queues([alias])):
            continue
        try:
            generator_for(runtime, alias)
            warm_up(runtime, alias)
        except Exception as exc:
            log.critical("cannot load or warm up the model %s", alias, exc_info=True)
            print(
                f"xsd worker: the model {alias} could not be loaded or warmed up "
                f"({type(exc).__name__}: {exc}); exiting before taking any job.",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(EXIT_MODEL_UNAVAILABLE) from exc


def _pause_for_spool(consumer: Consumer, queues: list[str], full: bool) -> None:
    """A full upload spool: take no new jobs (and say so on /readyz) until it drains.
    ``call_soon`` runs the change on the consumer's own loop, after the current batch."""
    if full:
        health.problems["spool"] = "the upload spool is full: the object store is failing"
    else:
        health.problems.pop("spool", None)
    for queue in queues:
        if full:
            consumer.call_soon(consumer.cancel_task_queue, queue)
        else:
            consumer.call_soon(consumer.add_task_queue, queue)


def run_worker(
    settings: Settings, *, queues: str, concurrency: int | None, hostname: str | None
) -> None:
    """Run a Celery worker for the named queues (blocks).

    GPU queues run in the solo pool: one process owns the GPU and keeps the model loaded.
    The CPU queue runs in a thread pool: its work is network I/O (references, webhooks).
    """
    runtime = init(settings)
    if settings.metrics_port:
        health.serve(settings.metrics_port, host=settings.metrics_interface())
    names = expand_queues(queues, runtime.registry.aliases())
    gpu = any(name != CPU_QUEUE for name in names)
    pool = "solo" if gpu else "threads"
    if gpu:
        metrics.register_once("gpu", metrics.GpuCollector())
    argv = ["worker", "--queues", ",".join(names), "--pool", pool, "--loglevel", "INFO"]
    argv += ["--without-gossip", "--without-mingle"]
    if gpu:
        _preload(runtime, names)
        from ..stages.tasks import configure_batching

        configure_batching(
            max_jobs=settings.batch_max_jobs, wait_seconds=settings.batch_wait_seconds
        )
        # celery-batches only sees prefetched messages: the prefetch must exceed a batch.
        argv += ["--prefetch-multiplier", str(settings.batch_max_jobs * 2)]
    else:
        # Threads decode references here; the budget bounds what they hold, this what the
        # process keeps once they are done.
        return_large_frees()
        argv += ["--concurrency", str(concurrency or 8)]
    if hostname:
        argv += ["--hostname", hostname]

    @worker_ready.connect(weak=False)
    def _ready(sender: Consumer, **_: object) -> None:
        if gpu:
            from ..stages.uploading import when_spool_full

            when_spool_full(partial(_pause_for_spool, sender, names))
        health.ready.set()
        log.info("worker ready on %s", ", ".join(names))

    app.worker_main(argv)


def run_beat(settings: Settings) -> None:
    """Run the beat that sends the reaper tick (blocks). Run exactly one per deployment;
    a second one only duplicates ticks, which are safe but wasteful."""
    init(settings)
    if settings.metrics_port:
        health.serve(settings.metrics_port, host=settings.metrics_interface())
    health.ready.set()
    schedule = settings.data_dir / "celerybeat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    app.start(["beat", "--loglevel", "INFO", "--schedule", str(schedule)])


def drain(settings: Settings, *, hostname: str, timeout: float = 10.0) -> list[str]:
    """Tell one worker to stop consuming every queue, so its in-flight jobs finish before
    it is stopped (a Kubernetes preStop hook). Returns the queues it stopped consuming."""
    init(settings)
    replies = app.control.inspect([hostname], timeout=timeout).active_queues() or {}
    queues = [queue["name"] for queue in replies.get(hostname, [])]
    for queue in queues:
        app.control.cancel_consumer(queue, destination=[hostname], reply=True, timeout=timeout)
    return queues
