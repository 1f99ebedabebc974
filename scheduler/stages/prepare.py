"""The prepare stage (CPU queue): moderation, reference fetching, final size, routing.

Routing puts the job in its GPU queue's fair order (:meth:`JobStore.enqueue`) and sends
that queue one message: GPU workers take the fairest waiting jobs, one per message.

Runs before any GPU time is spent. References are fetched through the SSRF guard, decoded
with the pixel-bomb guard within the process's decode budget, reduced to
``REFERENCE_MAX_SIDE``, normalised to PNG and kept in the object store, where the GPU
worker reads them; a reference that cannot be used fails the job with a refund.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from pipeline import InvalidImage, decode_image, encode_png
from storage import StorageError

from ..errors import FetchFailed, UnsafeURL
from ..jobs.objects import reference_key
from ..jobs.records import JobRecord
from ..jobs.sizes import parse_size, resolve, size_class
from ..jobs.states import JobErrorCode, JobStatus
from ..net.guard import fetch
from ..runtime import Runtime
from .celery_app import gpu_queue, send_generate
from .lifecycle import Job, delete_objects

__all__ = ["prepare", "REFERENCE_MAX_SIDE"]

log = logging.getLogger(__name__)

# References condition the model through a 224-pixel image encoder: keeping more than this
# only costs storage and transfer.
REFERENCE_MAX_SIDE = 1024
_FETCH_THREADS = 4
# While the object store is down, how long a job waits before its references are tried
# again.
_STORE_RETRY_MS = 30_000


class _ReferenceError(Exception):
    """A reference that cannot be used; the message is shown to the client."""


def _load_reference(runtime: Runtime, index: int, url: str) -> Image.Image:
    settings = runtime.settings
    try:
        fetched = fetch(
            url,
            runtime.net_policy,
            max_bytes=settings.reference_max_bytes,
            timeout=settings.reference_timeout_seconds,
        )
        return decode_image(
            fetched.data,
            max_pixels=settings.reference_max_pixels,
            max_side=REFERENCE_MAX_SIDE,
            budget=runtime.decode_budget,
        )
    except (UnsafeURL, FetchFailed, InvalidImage) as exc:
        raise _ReferenceError(f"Reference {index + 1} ({url}) could not be used: {exc}") from exc


def prepare(runtime: Runtime, job_id: str) -> None:
    """Prepare one job and hand it to its GPU queue. An unexpected exception fails the job
    with ``internal_error`` and a refund rather than leaving it queued; if even that cannot
    be recorded (Redis is away), the outbox sends the job again later."""
    record = runtime.jobs.get(job_id)
    if record is None or record.status is not JobStatus.QUEUED:
        return
    try:
        _prepare(runtime, record)
    except Exception:
        log.exception("preparing %s failed", job_id)
        Job.as_read(runtime, record).fail(
            JobErrorCode.INTERNAL_ERROR, "The request could not be prepared"
        )


def _prepare(runtime: Runtime, record: JobRecord) -> None:
    job_id = record.id
    verdict = runtime.moderator.check(record.prompt)
    if not verdict.allowed:
        Job.as_read(runtime, record).fail(
            JobErrorCode.CONTENT_POLICY, "The prompt was refused by the content policy"
        )
        return
    try:
        references = _fetch_all(runtime, record)
        keys = _store_references(runtime, record, references)
    except _ReferenceError as exc:
        Job.as_read(runtime, record).fail(JobErrorCode.VALIDATION_ERROR, str(exc))
        return
    except StorageError as exc:
        # The store is down: the job waits for it (the outbox sends it here again) rather
        # than failing; its deadline bounds the wait.
        log.warning("could not store the references of %s (%s); trying again later", job_id, exc)
        runtime.jobs.resend_at(job_id, runtime.jobs.now_ms() + _STORE_RETRY_MS)
        return
    width, height = _final_size(record, references)
    fields = {
        "reference_keys": json.dumps(keys),
        "width": str(width),
        "height": str(height),
        "prepared_ms": str(runtime.jobs.now_ms()),
    }
    queue = gpu_queue(record.model, size_class(width, height))
    if not runtime.jobs.enqueue(record, queue, fields):
        # Cancelled or deleted while we fetched: nothing will use the references.
        delete_objects(runtime, record)
        return
    # The message is a token: the worker that gets it takes the fairest job of the queue.
    send_generate(job_id, queue)


def _fetch_all(runtime: Runtime, record: JobRecord) -> list[Image.Image]:
    if not record.references:
        return []
    with ThreadPoolExecutor(max_workers=_FETCH_THREADS) as pool:
        futures = [
            pool.submit(_load_reference, runtime, index, url)
            for index, url in enumerate(record.references)
        ]
        return [future.result() for future in futures]


def _store_references(
    runtime: Runtime, record: JobRecord, references: list[Image.Image]
) -> list[str]:
    keys = []
    for index, image in enumerate(references):
        key = reference_key(record.account, record.id, index)
        runtime.store.put(key, encode_png(image, text={}), content_type="image/png")
        keys.append(key)
    return keys


def _final_size(record: JobRecord, references: list[Image.Image]) -> tuple[int, int]:
    if record.width is not None and record.height is not None:
        return record.width, record.height
    first = references[0] if references else None
    resolved = resolve(
        parse_size(record.size),
        record.aspect_ratio,
        has_references=bool(references),
        reference_aspect=first.width / first.height if first else None,
    )
    assert resolved is not None
    return resolved
