"""The public record: what ``GET /v1/generations/:id`` returns and webhooks deliver.

Built in one place so the webhook body is byte-for-byte the shape a poll returns. Signed
URLs are minted at read time with the fixed expiry ``finishedAt + URL lifetime``, so every
read of a record shows the same ``expiresAt``.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from storage import ObjectStore, StorageError

from .records import JobRecord
from .states import JobStatus

__all__ = ["iso_time", "public_status", "public_view", "image_id"]


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


def public_view(
    record: JobRecord,
    *,
    store: ObjectStore,
    base_url: str,
    ttl_seconds: int,
    now_ms: int,
) -> dict[str, Any]:
    """The record as the API shows it."""
    status = public_status(record, ttl_seconds=ttl_seconds, now_ms=now_ms)
    body: dict[str, Any] = {
        "requestId": record.id,
        "model": record.model,
        "status": status.value,
        "prompt": record.prompt,
        "referencesCount": len(record.references),
        "endUserEmail": record.email,
        "createdAt": iso_time(record.created_ms),
        "input": record.input,
    }
    if status is JobStatus.QUEUED:
        body["pollUrl"] = f"{base_url}/v1/generations/{record.id}"
    if status is JobStatus.SUCCEEDED:
        body["images"] = _images(record, store=store, ttl_seconds=ttl_seconds)
        body["cost"] = {"xTokens": record.cost}
    if status is JobStatus.FAILED and record.error:
        body["error"] = record.error
    if status.is_terminal() and record.finished_ms is not None:
        body["finishedAt"] = iso_time(record.finished_ms)
    return body


def _images(record: JobRecord, *, store: ObjectStore, ttl_seconds: int) -> list[dict[str, Any]]:
    assert record.finished_ms is not None
    expires_at = record.finished_ms // 1000 + ttl_seconds
    expires_iso = iso_time(expires_at * 1000)
    items: list[dict[str, Any]] = []
    for image in record.images:
        item: dict[str, Any] = {"id": image_id(record.id, image.index), "expiresAt": expires_iso}
        if image.key is None:
            item["error"] = {"code": image.error or "storage_failed"}
        elif record.response_format == "b64_json":
            try:
                item["b64Json"] = base64.b64encode(store.get(image.key)).decode("ascii")
            except StorageError:
                item["error"] = {"code": "storage_failed"}
        else:
            item["url"] = store.signed_url(image.key, expires_at=expires_at)
        items.append(item)
    return items
