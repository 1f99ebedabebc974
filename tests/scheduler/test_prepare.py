"""The prepare stage in process: real Redis, references served over real HTTP."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from scheduler.jobs.states import JobStatus
from scheduler.runtime import Runtime
from scheduler.stages.prepare import prepare
from tests.fixtures.images import INFLATING_CHUNKS, inflating_png, text_flood_png
from tests.fixtures.receivers import ImageHost, png_bytes

from .factories import accept, funded_runtime, job_record


def make_runtime(redis_url: str, data_dir: Path, **settings: Any) -> Runtime:
    # The image host is http on loopback.
    return funded_runtime(redis_url, data_dir, credits=1000, allow_private_urls=True, **settings)


@pytest.fixture
def runtime(redis_url: str, tmp_path: Path) -> Runtime:
    return make_runtime(redis_url, tmp_path)


def queue(rt: Runtime, *references: str) -> str:
    """A job of one image (10 xTokens debited) with ``references``, as POST leaves it."""
    record = job_record(created_ms=rt.jobs.now_ms(), references=references)
    accept(rt.jobs, record, deadline_ms=record.created_ms + 600_000, purge_ms=10**15)
    assert rt.accounts.info("acme")["balance"] == 990
    return record.id


@pytest.mark.parametrize(
    "payload",
    [
        *(inflating_png(kind) for kind in INFLATING_CHUNKS),
        inflating_png("zTXt", after_idat=True),
        text_flood_png(),
    ],
    ids=[*INFLATING_CHUNKS, "zTXt-after-IDAT", "text-flood"],
)
def test_undecodable_reference_fails_the_job_and_refunds(
    runtime: Runtime, image_host: ImageHost, payload: bytes
) -> None:
    good = image_host.add_image("/good.png", png_bytes())
    bad = image_host.add_image("/bad.png", payload)
    job_id = queue(runtime, good, bad)
    prepare(runtime, job_id)
    record = runtime.jobs.get(job_id)
    assert record is not None and record.status is JobStatus.FAILED
    assert record.error is not None and record.error["code"] == "validation_error"
    assert record.error["message"].startswith(f"Reference 2 ({bad}) could not be used:")
    assert "ValueError" in record.error["message"]
    assert runtime.accounts.info("acme")["balance"] == 1000


def test_references_are_reduced_to_the_adapters_size(
    runtime: Runtime, image_host: ImageHost
) -> None:
    photo = io.BytesIO()
    Image.new("RGB", (3000, 2000), (90, 20, 200)).save(photo, format="JPEG")
    job_id = queue(runtime, image_host.add_image("/photo.jpg", photo.getvalue(), "image/jpeg"))
    prepare(runtime, job_id)
    record = runtime.jobs.get(job_id)
    assert record is not None and record.status is JobStatus.QUEUED, record
    (key,) = record.reference_keys
    assert Image.open(io.BytesIO(runtime.store.get(key))).size == (1024, 683)
    assert runtime.decode_budget.held_bytes == 0


def test_reference_over_the_decode_budget_fails_the_job_and_refunds(
    redis_url: str, tmp_path: Path, image_host: ImageHost
) -> None:
    runtime = make_runtime(redis_url, tmp_path, reference_decode_budget_bytes=8 * 1024 * 1024)
    big = image_host.add_image("/big.png", png_bytes(2000, 2000))  # 16 MB decoded
    job_id = queue(runtime, big)
    prepare(runtime, job_id)
    record = runtime.jobs.get(job_id)
    assert record is not None and record.status is JobStatus.FAILED
    assert record.error is not None and record.error["code"] == "validation_error"
    assert re.search(r"needs about \d+ MiB, more than the 8 MiB allowed", record.error["message"])
    assert runtime.accounts.info("acme")["balance"] == 1000


def test_a_store_outage_makes_the_job_wait_not_fail(
    runtime: Runtime, image_host: ImageHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scheduler.redis import keys
    from storage import UploadFailed

    def down(key: str, data: bytes, *, content_type: str) -> None:
        raise UploadFailed("connection refused (simulated outage)", key=key)

    monkeypatch.setattr(runtime.store, "put", down)
    job_id = queue(runtime, image_host.add_image("/ref.png", png_bytes()))
    prepare(runtime, job_id)
    record = runtime.jobs.get(job_id)
    assert record is not None and record.status is JobStatus.QUEUED, "waits for the store"
    assert runtime.accounts.info("acme")["balance"] == 990
    due = runtime.redis.zscore(keys.DISPATCH, job_id)
    assert due is not None and 20_000 <= due - runtime.jobs.now_ms() <= 30_000, "tried again"
    monkeypatch.undo()
    prepare(runtime, job_id)
    record = runtime.jobs.get(job_id)
    assert record is not None and record.prepared_ms is not None and record.reference_keys
