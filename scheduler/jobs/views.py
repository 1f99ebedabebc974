"""The public record: what ``GET /v1/generations/:id`` returns and webhooks deliver.

Built in one place so the webhook body is byte-for-byte the shape a poll returns. Signed
URLs are minted at read time with the fixed expiry ``finishedAt + URL lifetime``, so every
read of a record shows the same ``expiresAt``.

A ``b64_json`` record inlines its images (bounded at POST by ``XSD_B64_MAX_PIXELS``):
:func:`stream_view` writes such a record one image at a time, so a poll holds one image in
memory, not all of them. Where inlining does not fit (lists of records, a webhook past
``XSD_WEBHOOK_MAX_BODY_BYTES``) the images are given as signed URLs instead.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from storage import ObjectStore, StorageError

from .records import JobRecord
from .sizes import parse_size, resolve
from .states import ImageErrorCode, JobStatus

__all__ = [
    "iso_time",
    "public_status",
    "public_input",
    "public_progress",
    "public_view",
    "public_queue",
    "stream_view",
    "image_id",
    "inlines",
]


def iso_time(ms: int) -> str:
    """ISO 8601 UTC with milliseconds, as in the spec's examples."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def public_status(record: JobRecord, *, ttl_seconds: int, now_ms: int) -> JobStatus:
    """The stored status, or ``expired`` for a success older than the URL lifetime."""
    if (
        record.status is JobStatus.SUCCEEDED
        and record.finished_ms is not None
        and now_ms > record.finished_ms + ttl_seconds * 1000
    ):
        return JobStatus.EXPIRED
    return record.status


def image_id(job_id: str, index: int) -> str:
    """Stable id of the ``index``-th image of a job."""
    return f"img_{job_id.removeprefix('req_')}_{index}"


def inlines(record: JobRecord) -> bool:
    """Whether the record's images are given inline (``b64Json``) where that fits."""
    return record.response_format == "b64_json"


def public_input(record: JobRecord) -> dict[str, Any]:
    """The record's ``input`` object: the request's settings, with the seed used and, once
    known, the pixels, so that it reproduces the generation."""
    body: dict[str, Any] = {
        "size": record.size,
        "aspectRatio": record.aspect_ratio.value,
        "n": record.n,
        "seed": record.seed,
        "guidanceScale": record.guidance_scale,
        "watermark": record.watermark,
        "responseFormat": record.response_format,
        "sequential": "auto" if record.sequential else "disabled",
        "references": list(record.references),
    }
    if record.sequential:
        body["sequentialOptions"] = {"maxImages": record.image_count}
    pixels = {} if record.width is None else {"width": record.width, "height": record.height}
    # Pixels resolved from the first reference come last, where the prepare stage added
    # them: a record's bytes (which webhooks sign) keep the key order clients have seen.
    late = _sized_by_reference(record)
    if not late:
        body.update(pixels)
    if record.webhook_url:
        body["webhookUrl"] = record.webhook_url
    if late:
        body.update(pixels)
    return body


def _sized_by_reference(record: JobRecord) -> bool:
    """Whether the request's size waited for its first reference's shape."""
    size = parse_size(record.size)
    return resolve(size, record.aspect_ratio, has_references=bool(record.references)) is None


def public_queue(position: int | None, start_ms: int | None) -> dict[str, Any]:
    """A queued job's ``queue`` object: its 1-based position in the fair order of the GPU
    queue it waits in and when it should start at that queue's recent rate, each null
    while unknown (the job is still being prepared; the queue has no recent rate)."""
    return {
        "position": position,
        "estimatedStartAt": None if start_ms is None else iso_time(start_ms),
    }


def public_progress(done: int, total: int) -> dict[str, Any]:
    """A processing job's ``progress``: denoising steps done of its schedule (refinement
    included; a job of several images counts their mean), as a fraction and as counts."""
    return {
        "fraction": round(done / total, 4) if total else 0.0,
        "stepsDone": done,
        "stepsTotal": total,
    }


def public_view(
    record: JobRecord,
    *,
    store: ObjectStore,
    base_url: str,
    ttl_seconds: int,
    now_ms: int,
    inline: bool = True,
) -> dict[str, Any]:
    """The record as the API shows it; ``inline=False`` gives a ``b64_json`` record's
    images as signed URLs."""
    status = public_status(record, ttl_seconds=ttl_seconds, now_ms=now_ms)
    body: dict[str, Any] = {
        "requestId": record.id,
        "model": record.model,
        "status": status.value,
        "prompt": record.prompt,
        "referencesCount": len(record.references),
        "endUserEmail": record.email,
        "createdAt": iso_time(record.created_ms),
        "input": public_input(record),
    }
    if status is JobStatus.QUEUED:
        body["pollUrl"] = f"{base_url}/v1/generations/{record.id}"
    if status is JobStatus.PROCESSING and record.progress is not None:
        body["progress"] = public_progress(*record.progress)
    if status is JobStatus.SUCCEEDED:
        body["images"] = list(
            _images(record, store=store, ttl_seconds=ttl_seconds, inline=inline and inlines(record))
        )
        body["cost"] = {"xTokens": record.cost}
    if status is JobStatus.FAILED and record.error:
        body["error"] = record.error
    if status.is_terminal() and record.finished_ms is not None:
        body["finishedAt"] = iso_time(record.finished_ms)
    return body


def stream_view(
    record: JobRecord, *, store: ObjectStore, base_url: str, ttl_seconds: int, now_ms: int
) -> Iterator[bytes]:
    """The record as JSON bytes, its inline images read and encoded one at a time as the
    response is written (the same content as :func:`public_view`, images last)."""
    view = public_view(
        record,
        store=store,
        base_url=base_url,
        ttl_seconds=ttl_seconds,
        now_ms=now_ms,
        inline=False,
    )
    if "images" not in view:
        yield json.dumps(view, separators=(",", ":")).encode()
        return
    del view["images"]
    yield json.dumps(view, separators=(",", ":"))[:-1].encode() + b',"images":['
    items = _images(record, store=store, ttl_seconds=ttl_seconds, inline=inlines(record))
    for position, item in enumerate(items):
        yield (b"," if position else b"") + json.dumps(item, separators=(",", ":")).encode()
    yield b"]}"


def _images(
    record: JobRecord, *, store: ObjectStore, ttl_seconds: int, inline: bool
) -> Iterator[dict[str, Any]]:
    assert record.finished_ms is not None
    expires_at = record.finished_ms // 1000 + ttl_seconds
    expires_iso = iso_time(expires_at * 1000)
    for image in record.images:
        item: dict[str, Any] = {"id": image_id(record.id, image.index), "expiresAt": expires_iso}
        if image.key is None:
            item["error"] = {"code": image.error or ImageErrorCode.STORAGE_FAILED}
        elif inline:
            try:
                item["b64Json"] = base64.b64encode(store.get(image.key)).decode("ascii")
            except StorageError:
                item["error"] = {"code": ImageErrorCode.STORAGE_FAILED}
        else:
            item["url"] = store.signed_url(image.key, expires_at=expires_at)
        yield item
