"""Runtimes and job records for scheduler tests: one place that knows every required field."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from scheduler.jobs.records import JobRecord
from scheduler.jobs.sizes import AspectRatio
from scheduler.jobs.states import JobStatus
from scheduler.jobs.store import JobStore
from scheduler.runtime import Runtime, init
from scheduler.settings import Settings
from scheduler.stages.celery_app import job_queue

_ids = itertools.count()


def funded_runtime(redis_url: str, data_dir: Path, *, credits: int, **settings: Any) -> Runtime:
    """A process runtime on ``redis_url`` whose account ``acme`` holds ``credits``;
    ``settings`` override the test settings."""
    rt = init(
        Settings(
            data_dir=data_dir,
            redis_url=redis_url,
            api_key_pepper="p",
            url_signing_key="k",
            **settings,
        )
    )
    rt.accounts.ensure("acme")
    rt.accounts.add_credits("acme", credits)
    return rt


def job_record(**changes: Any) -> JobRecord:
    """A queued, prepared 2048x2048 job of account ``acme``; ``changes`` override fields
    (the charge follows ``image_count`` unless given)."""
    images = changes.get("image_count", 1)
    base: dict[str, Any] = {
        "id": f"req_test{next(_ids):012d}",
        "account": "acme",
        "status": JobStatus.QUEUED,
        "model": "xSD4.5",
        "prompt": "a lighthouse",
        "email": "alice@your-product.com",
        "created_ms": 1_700_000_000_123,
        "references": (),
        "size": "2K",
        "aspect_ratio": AspectRatio.AUTO,
        "n": images,
        "image_count": images,
        "seed": 42,
        "guidance_scale": 7.5,
        "watermark": False,
        "response_format": "url",
        "sequential": False,
        "width": 2048,
        "height": 2048,
        "charged": 10 * images,
    }
    return JobRecord(**{**base, **changes})


def accept(
    jobs: JobStore,
    record: JobRecord,
    *,
    deadline_ms: int | None = None,
    purge_ms: int | None = None,
    dispatch_at_ms: int | None = None,
    key: str | None = None,
    fingerprint: str = "fp",
) -> tuple[str, bool]:
    """Store ``record`` as POST would (defaults: deadline in a minute, purge in an hour,
    sent again by the outbox in ten seconds)."""
    return jobs.accept(
        record,
        deadline_ms=record.created_ms + 60_000 if deadline_ms is None else deadline_ms,
        purge_ms=record.created_ms + 3_600_000 if purge_ms is None else purge_ms,
        dispatch_at_ms=record.created_ms + 10_000 if dispatch_at_ms is None else dispatch_at_ms,
        idempotency_digest=key,
        fingerprint=fingerprint,
        idempotency_ttl=86400,
    )


def route(jobs: JobStore, record: JobRecord, **fields: str) -> str:
    """Put an accepted job in its GPU queue's fair order as the prepare stage does, with
    ``fields`` set on it; returns the queue's name."""
    queue = job_queue(record)
    assert jobs.enqueue(record, queue, fields)
    return queue
