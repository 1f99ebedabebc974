"""The generate stage (GPU queue): claim a batch, run it on the GPU, finish each job.

A batch is what celery-batches gathered: up to ``XSD_BATCH_MAX_JOBS`` messages or what
arrived within ``XSD_BATCH_WAIT_SECONDS``. Its jobs are claimed (each with a lease and an
attempt number), planned into forward passes by bucket and pixel budget, and run. Each
job's outcome is recorded by the batch itself: a failing job fails alone and is refunded,
its neighbours go on. Images are encoded by a background pool into the upload spool
(:mod:`scheduler.spool`), which stores them through object-store outages, so the GPU starts
the next pass at once; leases are renewed until each job is finished, and a job this
worker no longer owns (cancelled, deleted, taken over) leaves its batch at the next step.

Because messages are acknowledged when the batch returns, possibly before its uploads end,
recovery does not rely on the broker: a job whose worker died stops having its lease
renewed, and the beat's tick re-dispatches it (see :mod:`scheduler.reaper`). A re-dispatched
or redelivered job whose lease is still alive is dropped here: its worker is working on it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

import pipeline
from pipeline import (
    GenerationRequest,
    InvalidInput,
    PipelineError,
    RequestCancelled,
    decode_image,
    derive_seed,
    encode_png,
)
from storage import ObjectNotFound, StorageError

from . import metrics
from .batching import plan_batches
from .jobs import Finish, JobStore
from .lifecycle import delete_objects, fail_job, succeed_job
from .objects import image_key
from .outage import Outage, is_outage
from .records import ImageResult, JobRecord
from .runtime import Runtime
from .sizes import size_class
from .spool import Spool, Upload
from .states import JobErrorCode

if TYPE_CHECKING:
    from pipeline import ImageGenerator as Generator

__all__ = [
    "run_batch",
    "generator_for",
    "LeaseKeeper",
    "encode_images",
    "when_spool_full",
    "PNG_COMPRESS_LEVEL",
]

log = logging.getLogger(__name__)

# zlib level 3 encodes a 2048x2048 PNG about 3x faster than the default 6 for ~15% more
# bytes: CPU time on a GPU worker is dearer than object-store bytes.
PNG_COMPRESS_LEVEL = 3

_generators: dict[str, Generator] = {}
_generators_lock = threading.Lock()


def generator_for(runtime: Runtime, alias: str) -> Generator:
    """The loaded pipeline for a model alias, loaded once per process."""
    with _generators_lock:
        if alias not in _generators:
            spec = runtime.registry.get(alias)
            log.info("loading model %s (%s)", alias, spec.source)
            # Imports torch: only GPU workers ever get here.
            from pipeline.acceleration import Acceleration

            settings = runtime.settings
            _generators[alias] = pipeline.load_generator(
                spec,
                device=settings.device,
                acceleration=Acceleration(
                    dtype=settings.dtype,
                    attention=settings.attention,
                    compile=settings.compile,
                    channels_last=settings.channels_last,
                ),
            )
        return _generators[alias]


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
class _Claimed:
    """A job this worker claimed; ``settled`` once its outcome is recorded or handed to
    the uploader (from then on nothing else may fail it)."""

    record: JobRecord
    attempt: int
    request: GenerationRequest | None = None
    settled: bool = False


class _Worker:
    """Per-process state of a GPU worker: leases, the upload pool, the idle clock."""

    def __init__(self, runtime: Runtime) -> None:
        settings = runtime.settings
        self.leases = LeaseKeeper(
            runtime.jobs,
            lease_ms=settings.lease_seconds * 1000,
            watch_ms=int(settings.watch_seconds * 1000),
        )
        self.uploads = ThreadPoolExecutor(settings.upload_threads, thread_name_prefix="encode")
        # Bounds the jobs whose images wait in memory to be encoded into the spool; the
        # store's speed does not count (the spool's threads upload).
        self.backlog = threading.BoundedSemaphore(settings.batch_max_jobs * 2)
        self.spool = Spool(
            settings.spool_path,
            max_bytes=settings.spool_max_bytes,
            retry_seconds=settings.upload_retry_seconds,
            threads=settings.upload_threads,
            on_full=_spool_full,
        )
        self.last_pass_end: float | None = None


_worker: _Worker | None = None
_worker_lock = threading.Lock()
# Called with True when the spool fills and False when it has drained (the worker process
# stops and resumes taking jobs, and says so on /readyz).
_spool_hooks: list[Callable[[bool], None]] = []


def when_spool_full(hook: Callable[[bool], None]) -> None:
    """Register what this process does when its upload spool fills or drains."""
    _spool_hooks.append(hook)


def _spool_full(full: bool) -> None:
    for hook in _spool_hooks:
        hook(full)


def _state(runtime: Runtime) -> _Worker:
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = _Worker(runtime)
        return _worker


def encode_images(record: JobRecord, images: Sequence[Image.Image]) -> list[Upload]:
    """Each image as a PNG with its provenance (model alias, request id), and its key."""
    provenance = {
        "Software": "xSD worker pool",
        "xsd:model": record.model,
        "xsd:requestId": record.id,
    }
    return [
        Upload(
            index=index,
            key=image_key(record.account, record.id, index),
            data=encode_png(image, text=provenance, compress_level=PNG_COMPRESS_LEVEL),
        )
        for index, image in enumerate(images)
    ]


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


def _fail(
    runtime: Runtime,
    state: _Worker,
    job: _Claimed,
    code: JobErrorCode,
    message: str,
) -> None:
    """Fail a claimed job (refunded); if even that cannot be recorded (Redis is away), the
    lease lapses and the beat hands the job to a worker again."""
    job.settled = True
    try:
        fail_job(runtime, job.record, code, message, attempt=job.attempt)
    except Exception:
        log.exception("could not record the failure of %s; its lease will lapse", job.record.id)
    finally:
        state.leases.release(job.record.id)


def _claim_all(
    runtime: Runtime, state: _Worker, job_ids: Sequence[str], claimed: list[_Claimed]
) -> None:
    """Claim what can be claimed, into ``claimed`` as it goes (so that a failure half-way
    still knows which jobs this worker holds)."""
    lease_ms = runtime.settings.lease_seconds * 1000
    for job_id in dict.fromkeys(job_ids):  # a job queued twice runs once
        claim = runtime.jobs.claim(job_id, lease_ms=lease_ms)
        if claim.outcome != "claimed":
            continue  # busy: its worker is on it; terminal or gone: nothing to do
        state.leases.hold(job_id, claim.attempt)
        record = runtime.jobs.get(job_id)
        if record is None or record.width is None or record.height is None:
            state.leases.release(job_id)
            continue
        job = _Claimed(record, claim.attempt)
        claimed.append(job)
        waited = (runtime.jobs.now_ms() - record.created_ms) / 1000
        metrics.QUEUE_WAIT.labels(size_class(record.width, record.height)).observe(waited)
        try:
            job.request = _request_for(runtime, record)
        except (ObjectNotFound, PipelineError) as exc:
            log.exception("could not load the references of %s", job_id)
            _fail(
                runtime,
                state,
                job,
                JobErrorCode.INTERNAL_ERROR,
                f"The job's references could not be read ({type(exc).__name__}); the request "
                "was refunded.",
            )
        except StorageError as exc:
            # The store is down: the job waits for it rather than failing. Its lease is let
            # go, so the beat hands it to a worker again once the lease lapses.
            log.warning("the references of %s cannot be read now (%s); later", job_id, exc)
            job.settled = True
            state.leases.release(job_id)


def _finish(runtime: Runtime, state: _Worker, job: _Claimed, images: list[Image.Image]) -> None:
    """Background: encode the images into the spool, which stores them and then records
    the job (:func:`_record`). The GPU may go on once they are on disk."""
    job_id = job.record.id
    try:
        uploads = encode_images(job.record, images)
        state.spool.submit(
            f"{job_id}.{job.attempt}",
            uploads,
            store=runtime.store,
            done=lambda results: _record(runtime, state, job, results),
            wanted=lambda: not state.leases.lost(job_id),
        )
    except Exception:
        log.exception("could not spool the images of %s", job_id)
        _fail(
            runtime,
            state,
            job,
            JobErrorCode.INTERNAL_ERROR,
            "The images could not be stored; the request was refunded.",
        )
    finally:
        state.backlog.release()


def _record(
    runtime: Runtime, state: _Worker, job: _Claimed, results: list[ImageResult] | None
) -> None:
    """From the spool: record the success of a job whose images are stored (those that
    could not be, past the retry bound, are refunded). None: the job was taken from this
    worker while its images waited; whoever took it records its outcome."""
    try:
        if results is None:
            return
        finish = _through_outage(
            lambda: succeed_job(runtime, job.record, job.attempt, results),
            seconds=runtime.settings.lease_seconds,
        )
        if finish.outcome == "gone":
            # Deleted while we ran: nothing may keep what we just uploaded.
            delete_objects(runtime, job.record)
    except Exception:
        log.exception("could not record the success of %s", job.record.id)
        _fail(
            runtime,
            state,
            job,
            JobErrorCode.INTERNAL_ERROR,
            "The success could not be recorded; the request was refunded.",
        )
    finally:
        state.leases.release(job.record.id)


def _through_outage(call: Callable[[], Finish], *, seconds: float) -> Finish:
    """``call``, tried again each second while Redis is away, for up to ``seconds`` (the
    images are stored: recording that is worth a wait, not a regeneration)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_outage(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _run_pass(runtime: Runtime, state: _Worker, generator: Generator, jobs: list[_Claimed]) -> None:
    requests = [job.request for job in jobs]
    assert all(request is not None for request in requests), "unsettled jobs have requests"
    images = sum(len(request.seeds) for request in requests)
    biggest = max(requests, key=lambda request: request.width * request.height)
    klass = size_class(biggest.width, biggest.height)
    if state.last_pass_end is not None:
        metrics.GPU_IDLE.inc(time.monotonic() - state.last_pass_end)
    started = time.monotonic()
    try:
        outcomes = generator.generate_batch(
            requests,
            on_step=lambda _, seconds: metrics.DENOISE_STEP.observe(seconds),
            # Cancelled, deleted or taken over: the job's rows leave at the next step.
            cancelled=state.leases.lost,
        )
    finally:
        state.last_pass_end = time.monotonic()
    metrics.GPU_SECONDS.labels(klass).observe(state.last_pass_end - started)
    metrics.BATCH_JOBS.observe(len(jobs))
    metrics.BATCH_IMAGES.observe(images)
    for job, outcome in zip(jobs, outcomes, strict=True):
        if isinstance(outcome, RequestCancelled):
            # Whoever took the job from us (a cancel, a delete, the reaper or another
            # worker) has recorded its outcome.
            metrics.JOBS_STOPPED.inc()
            job.settled = True
            state.leases.release(job.record.id)
        elif isinstance(outcome, InvalidInput):
            _fail(runtime, state, job, JobErrorCode.VALIDATION_ERROR, str(outcome))
        elif isinstance(outcome, PipelineError):
            _fail(
                runtime,
                state,
                job,
                JobErrorCode.PROVIDER_ERROR,
                f"The model could not generate the images ({outcome}); the request was refunded.",
            )
        else:
            metrics.IMAGES_GENERATED.inc(len(outcome))
            state.backlog.acquire()
            job.settled = True
            state.uploads.submit(_finish, runtime, state, job, outcome)


def run_batch(runtime: Runtime, job_ids: Sequence[str]) -> None:
    """Run the jobs of one batch; every job ends recorded, whatever happens to the others.
    An exception anywhere (a bug, a model that will not load, a dead GPU) fails the jobs
    this worker claimed and had not settled yet, with ``internal_error`` and a refund."""
    state = _state(runtime)
    claimed: list[_Claimed] = []
    try:
        _claim_all(runtime, state, job_ids, claimed)
        by_model: dict[str, list[_Claimed]] = {}
        for job in claimed:
            if not job.settled:
                by_model.setdefault(job.record.model, []).append(job)
        for model, jobs in by_model.items():
            _run_model(runtime, state, model, jobs)
    except Exception:
        log.exception("a batch of %d jobs failed", len(claimed))
        _fail_unsettled(runtime, state, claimed)


def _run_model(runtime: Runtime, state: _Worker, model: str, jobs: list[_Claimed]) -> None:
    try:
        generator = generator_for(runtime, model)
    except Exception as exc:
        log.exception("could not load %s", model)
        reason = str(exc) if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {exc}"
        for job in jobs:
            message = f"The model could not be loaded ({reason}); the request was refunded."
            _fail(runtime, state, job, JobErrorCode.PROVIDER_ERROR, message)
        return
    passes = plan_batches(
        jobs,
        bucket_of=lambda job: generator.bucket(job.request),
        images_of=lambda job: len(job.request.seeds),
        pixel_budget=_pixel_budget(runtime, generator),
    )
    for members in passes:
        try:
            _run_pass(runtime, state, generator, members)
        except Exception:
            # generate_batch isolates request failures; this is a bug or a dead GPU.
            log.exception("a pass of %d jobs failed", len(members))
            _fail_unsettled(runtime, state, members)


def _fail_unsettled(runtime: Runtime, state: _Worker, jobs: list[_Claimed]) -> None:
    """After an exception nobody planned for: fail (and refund) what it left open."""
    for job in jobs:
        if not job.settled:
            _fail(
                runtime,
                state,
                job,
                JobErrorCode.INTERNAL_ERROR,
                "The worker failed while generating; the request was refunded.",
            )


def _pixel_budget(runtime: Runtime, generator: Generator) -> int:
    # The budget is set in SDXL pixels (8 MP = eight 1024x1024 images); a model with a
    # smaller base resolution (tiny) gets the same number of images per pass.
    return runtime.settings.gpu_pixel_budget * generator.spec.base_resolution**2 // 1024**2
