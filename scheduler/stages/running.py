"""The generate stage (GPU queue): claim a batch, run it on the GPU, finish each job.

A batch is what celery-batches gathered: up to ``XSD_BATCH_MAX_JOBS`` messages or what
arrived within ``XSD_BATCH_WAIT_SECONDS``. Its jobs are claimed (:mod:`.claiming`: each
with a lease and an attempt number), planned here into forward passes by bucket and pixel
budget, and run. Each job's outcome is recorded by the batch itself: a failing job fails
alone and is refunded, its neighbours go on. Images are handed to the uploader
(:mod:`.uploading`), so the GPU starts the next pass at once; leases are renewed until each
job is finished, and a job this worker no longer owns (cancelled, deleted, taken over)
leaves its batch at the next denoising step.

Because messages are acknowledged when the batch returns, possibly before its uploads end,
recovery does not rely on the broker: a job whose worker died stops having its lease
renewed, and the beat's tick re-dispatches it (see :mod:`scheduler.stages.reaper`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pipeline
from pipeline import InvalidInput, PipelineError, RequestCancelled

from .. import metrics
from ..jobs.sizes import size_class
from ..jobs.states import JobErrorCode
from ..runtime import Runtime
from ..settings import Settings
from .batching import plan_batches
from .claiming import Claimed, LeaseKeeper, claim_all, fail_claimed
from .progress import ProgressWriter
from .uploading import Uploader

if TYPE_CHECKING:
    from pipeline import ImageGenerator

__all__ = ["WARMUP_STEPS", "run_batch", "generator_for", "warm_up"]

log = logging.getLogger(__name__)

# Denoising steps of a warm-up pass: the shapes do not depend on the count, and with CUDA
# graphs a shape's first call runs it, the second records its graph, the third replays.
WARMUP_STEPS = 3

_generators: dict[str, ImageGenerator] = {}
_generators_lock = threading.Lock()


def generator_for(runtime: Runtime, alias: str) -> ImageGenerator:
    """The loaded pipeline for a model alias, loaded once per process; the benchmark
    stand-in instead when ``XSD_STAND_IN_SECONDS_PER_MEGAPIXEL`` is set."""
    with _generators_lock:
        if alias not in _generators:
            spec = runtime.registry.get(alias)
            settings = runtime.settings
            if settings.stand_in_seconds_per_megapixel:
                _generators[alias] = _stand_in(alias, settings.stand_in_seconds_per_megapixel)
            else:
                _generators[alias] = _load(spec, settings)
        return _generators[alias]


def _load(spec: pipeline.ModelSpec, settings: Settings) -> ImageGenerator:
    log.info("loading model %s (%s)", spec.alias, spec.source)
    # Imports torch: only GPU workers ever get here.
    from pipeline.acceleration import Acceleration

    return pipeline.load_generator(
        spec,
        device=settings.device,
        acceleration=Acceleration(
            dtype=settings.dtype,
            attention=settings.attention,
            compile=settings.compile,
            channels_last=settings.channels_last,
            quantize=settings.quantize,
            vae_dtype=settings.vae_dtype,
        ),
    )


def warm_up(runtime: Runtime, alias: str) -> float | None:
    """Generate once at every ``XSD_WARMUP_SIZES`` x ``XSD_WARMUP_BATCH_SIZES``, so the
    shapes of those passes (their bucket, their refinement tiles) are compiled before the
    first job; returns the seconds it took (None without warm-up sizes), which it also
    logs and exports. Raises what the generator raises: a worker that cannot run its
    expected passes should not take jobs."""
    settings = runtime.settings
    sizes = settings.warmup_shapes()
    if not sizes:
        return None
    generator = generator_for(runtime, alias)
    started = time.monotonic()
    for width, height in sizes:
        for batch in settings.warmup_batches():
            requests = [
                pipeline.GenerationRequest(
                    request_id=f"warmup_{index}",
                    model=alias,
                    prompt="warm-up",
                    width=width,
                    height=height,
                    seeds=(index,),
                    guidance_scale=5.0,
                    steps=WARMUP_STEPS,
                )
                for index in range(batch)
            ]
            for outcome in generator.generate_batch(requests):
                if isinstance(outcome, PipelineError):
                    raise outcome
    seconds = time.monotonic() - started
    metrics.WARMUP_SECONDS.labels(alias).set(seconds)
    log.info(
        "warmed up %s in %.1f s: sizes %s, batch sizes %s",
        alias,
        seconds,
        settings.warmup_sizes,
        settings.warmup_batch_sizes,
    )
    return seconds


def _stand_in(alias: str, seconds_per_megapixel: float) -> ImageGenerator:
    from pipeline.stand_in import StandInGenerator

    log.warning(
        "XSD_STAND_IN_SECONDS_PER_MEGAPIXEL=%s: serving %s with the BENCHMARK STAND-IN "
        "(sleeps, returns noise images); never set this in service",
        seconds_per_megapixel,
        alias,
    )
    # Duck-typed: the stand-in has the three members the worker uses.
    return StandInGenerator(alias, seconds_per_megapixel)  # type: ignore[return-value]


class _Worker:
    """Per-process state of a GPU worker: leases, the uploader, the idle clock."""

    def __init__(self, runtime: Runtime) -> None:
        settings = runtime.settings
        self.leases = LeaseKeeper(
            runtime.jobs,
            lease_ms=settings.lease_seconds * 1000,
            watch_ms=int(settings.watch_seconds * 1000),
        )
        self.uploader = Uploader(runtime, self.leases)
        self.jobs = runtime.jobs
        self.last_pass_end: float | None = None


_worker: _Worker | None = None
_worker_lock = threading.Lock()


def _state(runtime: Runtime) -> _Worker:
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = _Worker(runtime)
        return _worker


def run_batch(runtime: Runtime, job_ids: Sequence[str]) -> None:
    """Run the jobs of one batch; every job ends recorded, whatever happens to the others.
    An exception anywhere (a bug, a model that will not load, a dead GPU) fails the jobs
    this worker claimed and had not settled yet, with ``internal_error`` and a refund."""
    state = _state(runtime)
    claimed: list[Claimed] = []
    try:
        with metrics.CLAIM_SECONDS.time():
            claim_all(runtime, state.leases, job_ids, claimed)
        by_model: dict[str, list[Claimed]] = {}
        for job in claimed:
            if not job.settled:
                by_model.setdefault(job.record.model, []).append(job)
        for model, jobs in by_model.items():
            _run_model(runtime, state, model, jobs)
    except Exception:
        log.exception("a batch of %d jobs failed", len(claimed))
        _fail_unsettled(state, claimed)


def _run_model(runtime: Runtime, state: _Worker, model: str, jobs: list[Claimed]) -> None:
    try:
        generator = generator_for(runtime, model)
    except Exception as exc:
        log.exception("could not load %s", model)
        reason = str(exc) if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {exc}"
        for job in jobs:
            fail_claimed(
                state.leases,
                job,
                JobErrorCode.PROVIDER_ERROR,
                f"The model could not be loaded ({reason})",
            )
        return
    passes = plan_batches(
        jobs,
        bucket_of=lambda job: generator.bucket(job.request),
        images_of=lambda job: len(job.request.seeds),
        pixel_budget=_pixel_budget(runtime, generator),
    )
    for members in passes:
        try:
            _run_pass(state, generator, members)
        except Exception:
            # generate_batch isolates request failures; this is a bug or a dead GPU.
            log.exception("a pass of %d jobs failed", len(members))
            _fail_unsettled(state, members)


def _run_pass(state: _Worker, generator: ImageGenerator, jobs: list[Claimed]) -> None:
    requests = [job.request for job in jobs]
    assert all(request is not None for request in requests), "unsettled jobs have requests"
    images = sum(len(request.seeds) for request in requests)
    biggest = max(requests, key=lambda request: request.width * request.height)
    klass = size_class(biggest.width, biggest.height)
    if state.last_pass_end is not None:
        metrics.GPU_IDLE.inc(time.monotonic() - state.last_pass_end)
    progress = ProgressWriter(state.jobs, {job.record.id: job.job.attempt for job in jobs})
    started = time.monotonic()
    try:
        outcomes = generator.generate_batch(
            requests,
            on_step=lambda _, seconds: metrics.DENOISE_STEP.observe(seconds),
            # Cancelled, deleted or taken over: the job's rows leave at the next step.
            cancelled=state.leases.lost,
            on_progress=progress.report,
        )
    finally:
        state.last_pass_end = time.monotonic()
        progress.flush()
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
            fail_claimed(state.leases, job, JobErrorCode.VALIDATION_ERROR, str(outcome))
        elif isinstance(outcome, PipelineError):
            fail_claimed(
                state.leases,
                job,
                JobErrorCode.PROVIDER_ERROR,
                f"The model could not generate the images ({outcome})",
            )
        else:
            metrics.IMAGES_GENERATED.inc(len(outcome))
            state.uploader.submit(job, outcome)


def _fail_unsettled(state: _Worker, jobs: list[Claimed]) -> None:
    """After an exception nobody planned for: fail (and refund) what it left open."""
    for job in jobs:
        if not job.settled:
            fail_claimed(
                state.leases,
                job,
                JobErrorCode.INTERNAL_ERROR,
                "The worker failed while generating",
            )


def _pixel_budget(runtime: Runtime, generator: ImageGenerator) -> int:
    # The budget is set in SDXL pixels (8 MP = eight 1024x1024 images); a model with a
    # smaller base resolution (tiny) gets the same number of images per pass.
    return runtime.settings.gpu_pixel_budget * generator.spec.base_resolution**2 // 1024**2
