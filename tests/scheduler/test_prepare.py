"""The prepare stage in process: real Redis, references served over real HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.prepare import prepare
from scheduler.runtime import Runtime, init
from scheduler.settings import Settings
from scheduler.states import JobStatus
from tests.fixtures.images import INFLATING_CHUNKS, inflating_png, text_flood_png
from tests.fixtures.receivers import ImageHost, png_bytes

from .factories import accept, job_record


@pytest.fixture
def runtime(redis_url: str, tmp_path: Path) -> Runtime:
    rt = init(
        Settings(
            data_dir=tmp_path,
            redis_url=redis_url,
            api_key_pepper="p",
            url_signing_key="k",
            allow_private_urls=True,  # the image host is http on loopback
        )
    )
    rt.accounts.ensure("acme")
    rt.accounts.add_credits("acme", 1000)
    return rt


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
