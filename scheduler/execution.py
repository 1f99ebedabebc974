"""The generate stage (GPU queue): claim, run the pipeline, store the images, finish.

A job is claimed with a lease that a background thread renews while the pipeline runs. A
redelivered message (the first worker died) finds the lease expired and takes the job over
with a new attempt number; the first worker, should it come back, can no longer finish it.
A redelivery that finds the lease alive (the first worker is only slow) is put back on the
queue until the lease ends or the job finishes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from PIL import Image

import pipeline
from pipeline import (
    GenerationRequest,
    InvalidInput,
    PipelineError,
    decode_image,
    derive_seed,
    encode_png,
)
from storage import StorageError

from . import metrics
from .celery_app import gpu_queue, send_generate
from .jobs import JobStore
from .lifecycle import delete_objects, fail_job, succeed_job
from .objects import image_key
from .records import ImageResult, JobRecord
from .runtime import Runtime
from .sizes import size_class
from .states import JobErrorCode

if TYPE_CHECKING:
    from pipeline import Generator

__all__ = ["generate", "generator_for", "LeaseKeeper", "store_images"]

log = logging.getLogger(__name__)

# zlib level 3 encodes a 2048x2048 PNG about 3x faster than the default 6 for ~15% more
# bytes: CPU time on a GPU worker is dearer than object-store bytes.
PNG_COMPRESS_LEVEL = 3

_generators: dict[str, Generator] = {}
_generators_lock = threading.Lock()


class _IdleClock:
    """Counts the time this worker's GPU spends between pipeline calls."""

    def __init__(self) -> None:
        self._last_end: float | None = None

    def busy(self) -> None:
        if self._last_end is not None:
            metrics.GPU_IDLE.inc(time.monotonic() - self._last_end)

    def idle(self) -> None:
        self._last_end = time.monotonic()


_idle_clock = _IdleClock()


def generator_for(runtime: Runtime, alias: str) -> Generator:
    """The loaded pipeline for a model alias, loaded once per process."""
    with _generators_lock:
        if alias not in _generators:
            spec = runtime.registry.get(alias)
            log.info("loading model %s (%s)", alias, spec.source)
            # Imports torch: only GPU workers ever get here.
            _generators[alias] = pipeline.load_generator(spec, device=runtime.settings.device)
        return _generators[alias]


class LeaseKeeper:
    """Renews a job's lease in the background while the block runs."""

    def __init__(self, jobs: JobStore, job_id: str, attempt: int, *, lease_ms: int) -> None:
        self._jobs, self._job_id, self._attempt, self._lease_ms = jobs, job_id, attempt, lease_ms
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)
        self.lost = False

    def _run(self) -> None:
        while not self._stop.wait(self._lease_ms / 3000):
            try:
                if not self._jobs.renew(self._job_id, self._attempt, lease_ms=self._lease_ms):
                    self.lost = True
                    log.warning("lost the lease on %s (attempt %d)", self._job_id, self._attempt)
                    return
            except Exception:  # a Redis blip: the next beat retries before the lease ends
                log.warning("could not renew the lease on %s", self._job_id, exc_info=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


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


def store_images(
    runtime: Runtime, record: JobRecord, images: Sequence[Image.Image]
) -> list[ImageResult]:
    """Encode and upload each image; one that cannot be stored becomes ``storage_failed``
    (and is refunded) without failing the others."""
    provenance = {
        "Software": "xSD worker pool",
        "xsd:model": record.model,
        "xsd:requestId": record.id,
    }
    results = []
    for index, image in enumerate(images):
        key = image_key(record.account, record.id, index)
        data = encode_png(image, text=provenance, compress_level=PNG_COMPRESS_LEVEL)
        started = time.monotonic()
        try:
            runtime.store.put(key, data, content_type="image/png")
        except StorageError:
            metrics.STORAGE_FAILURES.labels("put").inc()
            log.exception("could not store image %d of %s", index, record.id)
            results.append(ImageResult(index=index, error="storage_failed"))
        else:
            metrics.STORAGE_UPLOAD.observe(time.monotonic() - started)
            results.append(ImageResult(index=index, key=key))
    return results


def generate(runtime: Runtime, job_id: str) -> None:
    """Run one job on this worker."""
    lease_ms = runtime.settings.lease_seconds * 1000
    claim = runtime.jobs.claim(job_id, lease_ms=lease_ms)
    if claim.outcome == "busy":
        record = runtime.jobs.get(job_id)
        if record is not None and record.width and record.height:
            wait = max(1.0, (claim.lease_until_ms - runtime.jobs.now_ms()) / 1000 + 1)
            send_generate(
                job_id,
                gpu_queue(record.model, size_class(record.width, record.height)),
                countdown=wait,
            )
        return
    if claim.outcome != "claimed":
        return
    record = runtime.jobs.get(job_id)
    if record is None or record.width is None or record.height is None:
        return
    klass = size_class(record.width, record.height)
    metrics.QUEUE_WAIT.labels(klass).observe((runtime.jobs.now_ms() - record.created_ms) / 1000)
    with LeaseKeeper(runtime.jobs, job_id, claim.attempt, lease_ms=lease_ms):
        try:
            request = _request_for(runtime, record)
            _idle_clock.busy()
            started = time.monotonic()
            try:
                images = generator_for(runtime, record.model).generate(request)
            finally:
                _idle_clock.idle()
            metrics.GPU_SECONDS.labels(klass).observe(time.monotonic() - started)
        except InvalidInput as exc:
            fail_job(
                runtime, record, JobErrorCode.VALIDATION_ERROR, str(exc), attempt=claim.attempt
            )
            return
        except (PipelineError, StorageError, RuntimeError) as exc:
            log.exception("generation of %s failed", job_id)
            fail_job(
                runtime,
                record,
                JobErrorCode.PROVIDER_ERROR,
                f"The model could not generate the images ({type(exc).__name__}); the request "
                "was refunded.",
                attempt=claim.attempt,
            )
            return
        metrics.BATCH_JOBS.observe(1)
        metrics.BATCH_IMAGES.observe(len(images))
        metrics.IMAGES_GENERATED.inc(len(images))
        results = store_images(runtime, record, images)
    finish = succeed_job(runtime, record, claim.attempt, results)
    if finish.outcome == "gone":
        # Deleted while we ran: nothing may keep what we just uploaded.
        delete_objects(runtime, record)
