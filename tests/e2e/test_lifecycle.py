"""The whole path through real processes: API -> Redis -> Celery workers -> tiny SDXL
pipeline -> local object store -> signed URL, plus webhooks and references."""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.fixtures.receivers import ImageHost, WebhookReceiver, png_bytes
from tests.fixtures.stack import Stack

pytestmark = pytest.mark.slow

BASE = {"endUserEmail": "alice@your-product.com", "model": "xSD4.5"}


def submit(stack: Stack, key: Any, **body: Any) -> dict[str, Any]:
    with stack.client(key) as client:
        job = client.create_generation(**{**BASE, "prompt": "A lighthouse at dawn", **body})
        return stack.wait(client, job["requestId"])


def fetch_png(url: str) -> Image.Image:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def test_quick_example(stack: Stack) -> None:
    key = stack.new_key()
    started = time.time()
    record = submit(stack, key, prompt="Editorial photo of a young woman in a cobalt-blue gown")
    assert record["status"] == "succeeded", record
    assert record["cost"] == {"xTokens": 10}
    assert stack.balance(key.account) == 990
    (image,) = record["images"]
    assert set(image) == {"id", "url", "expiresAt"}
    picture = fetch_png(image["url"])
    assert picture.size == (2048, 2048)
    assert picture.text["xsd:requestId"] == record["requestId"]
    assert picture.text["xsd:model"] == "xSD4.5"
    finished = record["finishedAt"]
    assert finished >= record["createdAt"]
    # expiresAt is finishedAt + 23 h, stable across reads.
    expires = time.mktime(time.strptime(image["expiresAt"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert abs(expires - started - 23 * 3600) < 120
    with stack.client(key) as client:
        again = client.get_generation(record["requestId"])
    assert again["images"][0]["expiresAt"] == image["expiresAt"]
    assert again["input"]["seed"] == record["input"]["seed"]


def test_seed_reproduces_every_image(stack: Stack) -> None:
    key = stack.new_key()
    body = {"size": "2560x1440", "n": 2, "seed": 1234}
    first, second = submit(stack, key, **body), submit(stack, key, **body)
    other = submit(stack, key, size="2560x1440", n=1, seed=99)
    a = [httpx.get(i["url"]).content for i in first["images"]]
    b = [httpx.get(i["url"]).content for i in second["images"]]
    c = httpx.get(other["images"][0]["url"]).content
    images = [Image.open(io.BytesIO(data)) for data in a]
    assert [im.size for im in images] == [(2560, 1440)] * 2
    assert images[0].tobytes() == Image.open(io.BytesIO(b[0])).tobytes()
    assert images[1].tobytes() == Image.open(io.BytesIO(b[1])).tobytes()
    assert images[0].tobytes() != images[1].tobytes(), "image i gets its own derived seed"
    assert images[0].tobytes() != Image.open(io.BytesIO(c)).tobytes()
    assert stack.balance(key.account) == 1000 - 50


def test_b64_json(stack: Stack) -> None:
    key = stack.new_key()
    record = submit(stack, key, responseFormat="b64_json", size="1664x2496")
    (image,) = record["images"]
    assert "url" not in image
    picture = Image.open(io.BytesIO(base64.b64decode(image["b64Json"])))
    assert picture.size == (1664, 2496)
    headers = {"Authorization": f"Bearer {key.api_key}"}
    url = f"{stack.base_url}/v1/generations/{record['requestId']}"
    with httpx.stream("GET", url, headers=headers) as response:
        assert response.headers.get("transfer-encoding") == "chunked", "streamed, not built"
        assert json.loads(response.read()) == record
    listed = httpx.get(f"{stack.base_url}/v1/generations", headers=headers).json()["data"]
    assert "url" in listed[0]["images"][0], "a page of records lists URLs"


def test_watermark_marks_the_corner(stack: Stack) -> None:
    key = stack.new_key()
    plain = submit(stack, key, seed=5, size="2048x2048")
    marked = submit(stack, key, seed=5, size="2048x2048", watermark=True)
    a = fetch_png(plain["images"][0]["url"]).convert("RGB")
    b = fetch_png(marked["images"][0]["url"]).convert("RGB")
    corner = (1536, 1536, 2048, 2048)
    assert a.crop(corner).tobytes() != b.crop(corner).tobytes()
    assert a.crop((0, 0, 1024, 1024)).tobytes() == b.crop((0, 0, 1024, 1024)).tobytes()


def test_webhook_retried_until_delivered(stack: Stack, webhook_receiver: WebhookReceiver) -> None:
    key = stack.new_key()
    webhook_receiver.secret = key.webhook_secret
    webhook_receiver.statuses = [500, 503]
    record = submit(stack, key, webhookUrl=webhook_receiver.url)
    deliveries = webhook_receiver.wait_for(3, timeout=60)
    time.sleep(1.5)
    assert len(webhook_receiver.deliveries) == 3, "no delivery after a 2xx"
    assert all(d.verified for d in deliveries), [d.verify_error for d in deliveries]
    assert [d.headers["X-XMode-Delivery"] for d in deliveries] == [
        f"{record['requestId']}.{i}" for i in (1, 2, 3)
    ]
    body = json.loads(deliveries[-1].body)
    with stack.client(key) as client:
        polled = client.get_generation(record["requestId"])
    assert body == polled, "the webhook body is what GET returns"


def test_webhook_on_failure(stack: Stack, webhook_receiver: WebhookReceiver) -> None:
    key = stack.new_key()
    webhook_receiver.secret = key.webhook_secret
    record = submit(stack, key, prompt="csam", webhookUrl=webhook_receiver.url)
    assert record["status"] == "failed" and record["error"]["code"] == "content_policy"
    (delivery,) = webhook_receiver.wait_for(1)
    assert delivery.verified and json.loads(delivery.body)["error"]["code"] == "content_policy"
    assert stack.balance(key.account) == 1000, "failed generations are not charged"
    with stack.client(key) as client:
        usage = client._call("GET", "/v1/end-users/alice@your-product.com/usage")
    assert usage["policyViolations"] == 1 and usage["xTokens"] == 0


def test_reference_sets_auto_aspect(stack: Stack, image_host: ImageHost) -> None:
    url = image_host.add_image("/face.png", png_bytes(320, 180))
    record = submit(stack, stack.new_key(), references=url, size="2K")
    assert record["status"] == "succeeded", record
    assert (record["input"]["width"], record["input"]["height"]) == (2560, 1440)
    assert record["referencesCount"] == 1 and image_host.requests == ["/face.png"]


def test_reference_conditions_the_image(stack: Stack, image_host: ImageHost) -> None:
    """Through the whole path, the reference reaches the IP-Adapter: the same prompt and
    seed without it give another image."""
    url = image_host.add_image("/outfit.png", png_bytes(256, 256))
    key = stack.new_key()
    body = {"prompt": "image_1 for the outfit, a dancer on a stage", "seed": 5, "size": "2K"}
    with_reference = submit(stack, key, references=[url], **body)
    without = submit(stack, key, **body)
    assert with_reference["status"] == without["status"] == "succeeded"
    first = fetch_png(with_reference["images"][0]["url"])
    second = fetch_png(without["images"][0]["url"])
    assert first.size == second.size == (2048, 2048)
    assert first.tobytes() != second.tobytes()


def test_sequential_frames_come_back_in_order(stack: Stack) -> None:
    key = stack.new_key()
    body = {
        "prompt": "The same woman at four life stages: child, adolescent, adult, elderly",
        "sequential": "auto",
        "sequentialOptions": {"maxImages": 4},
        "seed": 77,
        "size": "2K",
    }
    first, again = submit(stack, key, **body), submit(stack, key, **body)
    assert first["status"] == "succeeded", first
    assert first["cost"] == {"xTokens": 40}
    frames = [fetch_png(image["url"]) for image in first["images"]]
    repeat = [fetch_png(image["url"]) for image in again["images"]]
    assert [frame.size for frame in frames] == [(2048, 2048)] * 4
    # Frames are distinct images, and the series reproduces frame by frame, in order.
    assert len({frame.tobytes() for frame in frames}) == 4
    assert [f.tobytes() for f in frames] == [r.tobytes() for r in repeat]


@pytest.mark.parametrize(
    ("route", "payload", "match"),
    [
        ("/missing.png", None, "404"),
        ("/huge.png", b"\x89PNG" + b"0" * (10 * 1024 * 1024 + 1), "10485760"),
        ("/garbage.png", b"definitely not an image", "could not be used"),
    ],
)
def test_unusable_reference_fails_and_refunds(
    stack: Stack, image_host: ImageHost, route: str, payload: bytes | None, match: str
) -> None:
    if payload is not None:
        image_host.add_image(route, payload)
    key = stack.new_key()
    record = submit(stack, key, references=[image_host.url(route)])
    assert record["status"] == "failed"
    assert record["error"]["code"] == "validation_error"
    assert "Reference 1" in record["error"]["message"] and match in record["error"]["message"]
    assert stack.balance(key.account) == 1000


def test_an_image_that_cannot_be_stored_waits_until_it_can(stack: Stack) -> None:
    """One image's upload fails: the job stays processing (its GPU work kept in the spool)
    and succeeds with every image once the store takes it. (Past XSD_UPLOAD_RETRY_SECONDS
    it would be storage_failed and refunded: tests/e2e/test_s3.py.)"""
    key = stack.new_key()
    with stack.client(key) as client:
        job = client.create_generation(**BASE, prompt="three boats", n=3, size="2048x2048")
        # Make image 1's object path unwritable: a directory where the file must go.
        folder = stack.settings.objects_dir / "images" / key.account / job["requestId"]
        blocker = folder / "1.png"
        blocker.mkdir(parents=True)
        deadline = time.monotonic() + 120
        while not (folder / "2.png").exists():
            assert time.monotonic() < deadline, "the other images were never stored"
            time.sleep(0.2)
        time.sleep(2)  # retries of image 1 fail meanwhile
        assert client.get_generation(job["requestId"])["status"] == "processing"
        blocker.rmdir()
        record = stack.wait(client, job["requestId"])
    assert record["status"] == "succeeded"
    assert all("url" in image for image in record["images"])
    assert record["cost"] == {"xTokens": 30}
    assert stack.balance(key.account) == 970


def test_signed_urls_are_checked(stack: Stack) -> None:
    record = submit(stack, stack.new_key())
    url = record["images"][0]["url"]
    assert httpx.get(url).status_code == 200
    forged = url.replace("signature=", "signature=0")
    assert httpx.get(forged).status_code == 403
    other_key = url.replace("/0.png", "/1.png")
    assert httpx.get(other_key).status_code == 403
    stretched = url.replace("expires=", "expires=9")
    assert httpx.get(stretched).status_code == 403


def test_concurrent_jobs_share_batches(stack: Stack) -> None:
    from concurrent.futures import ThreadPoolExecutor

    port = stack.supervisor.metrics_ports()["gpu-worker"]

    def multi_job_passes() -> float:
        text = scrape(port)
        values = {
            line.split()[0]: float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("xsd_batch_jobs_")
        }
        return values["xsd_batch_jobs_count"] - values['xsd_batch_jobs_bucket{le="1.0"}']

    before = multi_job_passes()
    key = stack.new_key()
    with stack.client(key) as client, ThreadPoolExecutor(6) as pool:
        jobs = list(
            pool.map(
                lambda i: client.create_generation(**BASE, prompt=f"boat {i}", seed=i), range(6)
            )
        )
        records = [stack.wait(client, job["requestId"]) for job in jobs]
    assert all(r["status"] == "succeeded" for r in records)
    assert multi_job_passes() > before, "concurrently queued jobs share a forward pass"


def scrape(port: int) -> str:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def test_every_process_exposes_metrics(stack: Stack) -> None:
    # Runs after the tests above, so every stage has done work in this stack.
    ports = stack.supervisor.metrics_ports()
    assert set(ports) == {"cpu-worker", "gpu-worker", "beat"}
    for name, port in ports.items():
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200, name
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200, name
    api = httpx.get(f"{stack.base_url}/metrics").text
    gpu = scrape(ports["gpu-worker"])
    cpu = scrape(ports["cpu-worker"])
    expected = {
        "api": (
            api,
            [
                "xsd_http_requests_total",
                "xsd_http_request_duration_seconds_bucket",
                'xsd_queue_depth{queue="gpu.xsd45.2k"}',
                "xsd_xtokens_debited_total",
            ],
        ),
        "gpu": (
            gpu,
            [
                "xsd_queue_wait_seconds_bucket",
                "xsd_gpu_seconds_bucket",
                "xsd_end_to_end_seconds_bucket",
                "xsd_batch_images_bucket",
                "xsd_batch_jobs_bucket",
                "xsd_images_generated_total",
                "xsd_storage_upload_seconds_bucket",
                "xsd_gpu_idle_seconds_total",
                'xsd_jobs_finished_total{code="none",status="succeeded"}',
                'xsd_storage_failures_total{operation="put"}',
            ],
        ),
        "cpu": (
            cpu,
            [
                'xsd_webhook_attempts_total{outcome="delivered"}',
                'xsd_webhook_attempts_total{outcome="failed"}',
                'xsd_jobs_finished_total{code="content_policy",status="failed"}',
                "xsd_xtokens_refunded_total",
            ],
        ),
    }
    for process, (text, names) in expected.items():
        missing = [name for name in names if name not in text]
        assert not missing, f"{process} lacks {missing}"
    for text in (api, gpu, cpu):
        assert "req_" not in text and "@your-product.com" not in text, "bounded labels only"
