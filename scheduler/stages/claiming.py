"""Claiming for the generate stage: a batch's jobs claimed, fairest first across accounts,
with leases and attempt numbers,
the background watch that renews those leases and notices the jobs this worker no longer
owns, and the recording of a claimed job's failure.

A re-dispatched or redelivered job whose lease is still alive is dropped here: its worker
is working on it. A job whose worker died stops having its lease renewed, and the beat's
tick re-dispatches it (see :mod:`scheduler.stages.reaper`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline import GenerationRequest, PipelineError, decode_image, derive_seed
from storage import ObjectNotFound, StorageError

from .. import metrics
from ..jobs.records import JobRecord
from ..jobs.sizes import size_class
from ..jobs.states import JobErrorCode
from ..jobs.store import JobStore
from ..redis.outage import Outage, is_outage
from ..runtime import Runtime
from .celery_app import gpu_queue
from .lifecycle import Job

__all__ = ["LeaseKeeper", "Claimed", "claim_all", "fail_claimed"]

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews the leases of every job this process holds, and notices the jobs it no longer
    owns (cancelled, deleted, timed out, or taken over by another worker while this one was
    frozen), from one background thread: one Redis round trip per ``watch_ms``, so the GPU
    thread only reads a set between denoising steps."""

    def __init__(self, jobs: JobStore, *, lease_ms: int, watch_ms: int) -> None:
        self._jobs, self._lease_ms, self._watch_ms = jobs, lease_ms, watch_ms
        self._held: dict[str, int] = {}
        self._lost: set[str] = set()
        self._outage = Outage("keeping the jobs it runs")
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="leases", daemon=True)
        self._thread.start()

    def hold(self, job_id: str, attempt: int) -> None:
        """Keep renewing this job's lease until :meth:`release`."""
        with self._lock:
            self._held[job_id] = attempt
            self._lost.discard(job_id)

    def release(self, job_id: str) -> None:
        """Stop renewing (the job is finished, or lost)."""
        with self._lock:
            self._held.pop(job_id, None)
            self._lost.discard(job_id)

    def holds(self, job_id: str) -> bool:
        """Whether this worker renews the job's lease."""
        return job_id in self._held

    def lost(self, job_id: str) -> bool:
        """Whether this worker no longer owns a job it holds: its work should stop."""
        return job_id in self._lost

    def _run(self) -> None:
        renew_every = self._lease_ms / 3000
        renewed = time.monotonic()
        while True:
            time.sleep(self._watch_ms / 1000)
            with self._lock:
                held = {k: v for k, v in self._held.items() if k not in self._lost}
            if not held:
                continue
            try:
                lost = self._jobs.not_owned(held)
            except Exception as exc:  # a Redis blip: the next round looks again
                if is_outage(exc):
                    self._outage.failed(exc)
                else:
                    log.warning("could not check the jobs this worker holds", exc_info=True)
                continue
            self._outage.succeeded()
            if lost:
                log.info("stopping work on %s: no longer this worker's", ", ".join(sorted(lost)))
                with self._lock:
                    self._lost |= lost & self._held.keys()
            if time.monotonic() - renewed >= renew_every:
                renewed = time.monotonic()
                self._renew({k: v for k, v in held.items() if k not in lost})

    def _renew(self, held: dict[str, int]) -> None:
        for job_id, attempt in held.items():
            try:
                if not self._jobs.renew(job_id, attempt, lease_ms=self._lease_ms):
                    with self._lock:
                        if self._held.get(job_id) != attempt:
                            continue  # finished and released meanwhile: nothing lost
                        self._lost.add(job_id)
                    # Taken over (we were too slow) or gone: our result is stale.
                    log.warning("lost the lease on %s (attempt %d)", job_id, attempt)
            except Exception:  # a Redis blip: the next round retries before expiry
                log.warning("could not renew the lease on %s", job_id, exc_info=True)


@dataclass
class Claimed:
    """A job this worker claimed; ``settled`` once its outcome is recorded or handed to
    the uploader (from then on nothing else may fail it)."""

    job: Job
    request: GenerationRequest | None = None
    settled: bool = False

    @property
    def record(self) -> JobRecord:
        """The job's record as claimed."""
        return self.job.record


def fail_claimed(leases: LeaseKeeper, claimed: Claimed, code: JobErrorCode, reason: str) -> None:
    """Fail a claimed job (refunded) and stop renewing its lease; if even the failure
    cannot be recorded (Redis is away), the lease lapses and the beat hands the job to a
    worker again."""
    claimed.settled = True
    try:
        claimed.job.fail(code, reason)
    except Exception:
        log.exception("could not record the failure of %s; its lease will lapse", claimed.record.id)
    finally:
        leases.release(claimed.record.id)


def _request_for(runtime: Runtime, record: JobRecord) -> GenerationRequest:
    assert record.width is not None and record.height is not None
    references = tuple(
        decode_image(runtime.store.get(key), max_pixels=runtime.settings.reference_max_pixels)
        for key in record.reference_keys
    )
    return GenerationRequest(
        request_id=record.id,
        model=record.model,
        prompt=record.prompt,
        width=record.width,
        height=record.height,
        seeds=tuple(derive_seed(record.seed, i) for i in range(record.image_count)),
        guidance_scale=record.guidance_scale,
        watermark=record.watermark,
        references=references,
        sequential=record.sequential,
    )


def claim_all(
    runtime: Runtime, leases: LeaseKeeper, job_ids: Sequence[str], claimed: list[Claimed]
) -> None:
    """Claim what can be claimed, into ``claimed`` as it goes (so that a failure half-way
    still knows which jobs this worker holds), each with its request ready to run.

    Each message is a token for the GPU queue of the job it names: a batch of k messages
    of a queue claims the k fairest jobs waiting there (:meth:`JobStore.pick`), whichever
    jobs its messages named. A job queued twice runs once: a pick takes it out of its queue.
    """
    lease_ms = runtime.settings.lease_seconds * 1000
    labels: dict[str, str] = {}  # account -> its class, read once a batch
    for queue, tokens in _tokens(runtime, job_ids).items():
        picked = runtime.jobs.pick(queue, tokens, lease_ms=lease_ms)
        for job_id, attempt in picked:
            leases.hold(job_id, attempt)
        try:
            # The GPU waits while a batch is claimed: its records come in one round trip.
            records = runtime.jobs.get_many([job_id for job_id, _ in picked])
        except Exception:
            # Not renewed, their leases lapse and the beat hands them out again; renewed,
            # they would stay processing with nobody working on them.
            for job_id, _ in picked:
                leases.release(job_id)
            raise
        for (job_id, attempt), record in zip(picked, records, strict=True):
            if record is None or record.width is None or record.height is None:
                leases.release(job_id)
                continue
            if record.account not in labels:
                labels[record.account] = runtime.accounts.share(record.account).label
            job = Claimed(Job.claimed(runtime, record, attempt))
            _ready(runtime, leases, job, claimed, account_class=labels[record.account])


def _tokens(runtime: Runtime, job_ids: Sequence[str]) -> dict[str, int]:
    """How many messages of a batch each GPU queue got, from the jobs they name. A message
    naming a job that is gone, or was never routed, is no token."""
    tokens: dict[str, int] = {}
    for shape in runtime.jobs.shapes(job_ids):
        if shape is not None:
            queue = gpu_queue(shape[0], size_class(shape[1], shape[2]))
            tokens[queue] = tokens.get(queue, 0) + 1
    return tokens


def _ready(
    runtime: Runtime,
    leases: LeaseKeeper,
    job: Claimed,
    claimed: list[Claimed],
    *,
    account_class: str,
) -> None:
    """Record a claimed job's wait and load its references."""
    record = job.record
    assert record.width is not None and record.height is not None
    claimed.append(job)
    waited = (runtime.jobs.now_ms() - record.created_ms) / 1000
    metrics.QUEUE_WAIT.labels(size_class(record.width, record.height), account_class).observe(
        waited
    )
    try:
        job.request = _request_for(runtime, record)
    except (ObjectNotFound, PipelineError) as exc:
        log.exception("could not load the references of %s", record.id)
        fail_claimed(
            leases,
            job,
            JobErrorCode.INTERNAL_ERROR,
            f"The job's references could not be read ({type(exc).__name__})",
        )
    except StorageError as exc:
        # The store is down: the job waits for it rather than failing. Its lease is let
        # go, so the beat hands it to a worker again once the lease lapses.
        log.warning("the references of %s cannot be read now (%s); later", record.id, exc)
        job.settled = True
        leases.release(record.id)
