"""The public record's shape, derived status and image items."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from scheduler.jobs.records import ImageResult, JobRecord
from scheduler.jobs.states import JobStatus
from scheduler.jobs.views import iso_time, public_input, public_view
from scheduler.stages.webhooks import backoff_seconds
from storage import LocalStore

from .factories import job_record

TTL = 82_800


def record(**changes) -> JobRecord:
    base = dict(
        id="req_abcdefghijklmnop",
        references=("https://cdn.your-product.com/a.png",),
        image_count=2,
    )
    return job_record(**{**base, **changes})


def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path, files_url="https://api.test/v1/files/", signing_key=b"k")


def view(rec: JobRecord, tmp_path: Path, now_ms: int) -> dict:
    return public_view(
        rec, store=store(tmp_path), base_url="https://api.test", ttl_seconds=TTL, now_ms=now_ms
    )


def test_iso_time() -> None:
    assert iso_time(1_777_751_115_204) == "2026-05-02T19:45:15.204Z"


def test_queued_shape(tmp_path: Path) -> None:
    body = view(record(), tmp_path, 1_700_000_000_500)
    assert body["pollUrl"] == "https://api.test/v1/generations/req_abcdefghijklmnop"
    assert body["referencesCount"] == 1 and body["status"] == "queued"
    assert not {"images", "cost", "error", "finishedAt"} & set(body)


def test_succeeded_then_expired(tmp_path: Path) -> None:
    finished = 1_700_000_100_000
    images = (
        ImageResult(index=0, key="images/acme/r/0.png"),
        ImageResult(index=1, error="storage_failed"),
    )
    rec = record(status=JobStatus.SUCCEEDED, finished_ms=finished, images=images, cost=10)
    body = view(rec, tmp_path, finished + 1000)
    assert body["cost"] == {"xTokens": 10} and "pollUrl" not in body
    first, second = body["images"]
    assert first["id"] == "img_abcdefghijklmnop_0" and "signature=" in first["url"]
    assert first["expiresAt"] == iso_time(finished + TTL * 1000)
    assert second == {
        "id": "img_abcdefghijklmnop_1",
        "expiresAt": first["expiresAt"],
        "error": {"code": "storage_failed"},
    }
    late = view(rec, tmp_path, finished + TTL * 1000 + 1)
    assert late["status"] == "expired" and "images" not in late and "cost" not in late
    assert late["finishedAt"] == body["finishedAt"]


def test_b64_of_a_missing_object_is_storage_failed(tmp_path: Path) -> None:
    rec = record(
        status=JobStatus.SUCCEEDED,
        finished_ms=1_700_000_100_000,
        images=(ImageResult(index=0, key="images/acme/r/0.png"),),
        response_format="b64_json",
    )
    (item,) = view(rec, tmp_path, 1_700_000_100_001)["images"]
    assert item["error"] == {"code": "storage_failed"}


def test_input_is_the_request_as_accepted() -> None:
    sequential = job_record(
        sequential=True, image_count=3, n=1, webhook_url="https://hooks.your-product.com/x"
    )
    assert json.dumps(public_input(sequential), separators=(",", ":")) == (
        '{"size":"2K","aspectRatio":"auto","n":1,"seed":42,"guidanceScale":7.5,'
        '"watermark":false,"responseFormat":"url","sequential":"auto","references":[],'
        '"sequentialOptions":{"maxImages":3},"width":2048,"height":2048,'
        '"webhookUrl":"https://hooks.your-product.com/x"}'
    )
    # An auto size with references is resolved by the prepare stage: its pixels come last.
    referenced = record(width=None, height=None, webhook_url="https://hooks.your-product.com/x")
    assert "width" not in public_input(referenced)
    assert list(public_input(replace(referenced, width=2560, height=1440)))[-3:] == [
        "webhookUrl",
        "width",
        "height",
    ]


def test_failed_shape(tmp_path: Path) -> None:
    rec = record(
        status=JobStatus.FAILED,
        finished_ms=1_700_000_100_000,
        error={"code": "provider_error", "message": "x"},
    )
    body = view(rec, tmp_path, 1_700_000_200_000)
    assert (
        body["error"]["code"] == "provider_error" and "images" not in body and "finishedAt" in body
    )


def test_backoff_doubles_to_a_cap() -> None:
    delays = [backoff_seconds(a, base=5, cap=3600) for a in range(1, 15)]
    assert 3.75 <= delays[0] <= 5 and 7.5 <= delays[1] <= 10
    assert all(d <= 3600 for d in delays) and delays[-1] >= 2700
    # Retrying for 26 h at the cap takes at least 24 attempts past the ramp.
    assert sum(min(3600, 5 * 2**i) for i in range(40)) > 26 * 3600


class CountingStore(LocalStore):
    """A local store that counts reads, to see when a stream reads each image."""

    reads = 0

    def get(self, key: str) -> bytes:
        self.reads += 1
        return super().get(key)


def test_a_b64_record_streams_one_image_at_a_time(tmp_path: Path) -> None:
    import base64
    import json

    from scheduler.jobs.views import stream_view

    counting = CountingStore(tmp_path, files_url="https://api.test/v1/files/", signing_key=b"k")
    images = []
    for index in range(3):
        key = f"images/acme/r/{index}.png"
        counting.put(key, bytes([index]) * 1000, content_type="image/png")
        images.append(ImageResult(index=index, key=key, size=1000))
    rec = record(
        status=JobStatus.SUCCEEDED,
        finished_ms=1_700_000_100_000,
        images=(*images, ImageResult(index=3, error="storage_failed")),
        cost=30,
        response_format="b64_json",
    )
    arguments = dict(store=counting, base_url="https://api.test", ttl_seconds=TTL, now_ms=1)
    chunks = stream_view(rec, **arguments)
    next(chunks)
    assert counting.reads == 0, "the head is written before any image is read"
    next(chunks)
    assert counting.reads == 1
    whole = json.loads(b"".join(stream_view(rec, **arguments)))
    assert whole == public_view(rec, **arguments)
    assert base64.b64decode(whole["images"][2]["b64Json"]) == bytes([2]) * 1000
    assert whole["images"][3]["error"] == {"code": "storage_failed"}
    listed = public_view(rec, **arguments, inline=False)
    assert all("url" in item for item in listed["images"][:3]), "lists give URLs"
