"""Webhook bodies against real Redis and a local store: the record as GET shows it, with
inline images only while the body stays small."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from scheduler.jobs.records import ImageResult
from scheduler.runtime import Runtime
from scheduler.stages.webhooks import render_body

from .factories import accept, funded_runtime, job_record


def runtime_with_limit(redis_url: str, tmp_path: Path, limit: int) -> Runtime:
    return funded_runtime(redis_url, tmp_path, credits=100, webhook_max_body_bytes=limit)


@pytest.mark.parametrize(("limit", "inline"), [(4 * 1024 * 1024, True), (100_000, False)])
def test_inline_images_only_while_the_body_is_small(
    redis_url: str, tmp_path: Path, limit: int, inline: bool
) -> None:
    rt = runtime_with_limit(redis_url, tmp_path, limit)
    record = job_record(
        image_count=2,
        created_ms=rt.jobs.now_ms(),
        response_format="b64_json",
    )
    accept(rt.jobs, record)
    attempt = rt.jobs.claim(record.id, lease_ms=60_000).attempt
    results = []
    for index in range(2):
        key = f"images/acme/{record.id}/{index}.png"
        data = bytes([index]) * 30_000  # 80 KB of base64 for the two
        rt.store.put(key, data, content_type="image/png")
        results.append(ImageResult(index=index, key=key, size=len(data)))
    assert rt.jobs.succeed(record, attempt, results, webhook_at_ms=None).ok
    body = render_body(rt, record.id)
    assert body is not None and len(body) <= limit
    images = json.loads(body)["images"]
    if inline:
        assert base64.b64decode(images[1]["b64Json"]) == bytes([1]) * 30_000
    else:
        assert all("url" in image and "b64Json" not in image for image in images)


def test_each_delivery_attempt_is_timed(redis_url: str, tmp_path: Path, webhook_receiver) -> None:
    """``xsd_webhook_delivery_seconds`` observes each attempt (the pool benchmark's
    webhook share)."""
    from prometheus_client import REGISTRY

    from scheduler.jobs.states import JobErrorCode
    from scheduler.stages.webhooks import deliver

    rt = funded_runtime(redis_url, tmp_path, credits=100, allow_private_urls=True)
    record = job_record(created_ms=rt.jobs.now_ms(), webhook_url=webhook_receiver.url)
    accept(rt.jobs, record)
    rt.jobs.fail(record, JobErrorCode.PROVIDER_ERROR, "x", webhook_at_ms=rt.jobs.now_ms())
    before = REGISTRY.get_sample_value("xsd_webhook_delivery_seconds_count") or 0
    deliver(rt, record.id)
    assert len(webhook_receiver.wait_for(1)) == 1
    assert REGISTRY.get_sample_value("xsd_webhook_delivery_seconds_count") - before == 1
