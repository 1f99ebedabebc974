"""The lifecycle with S3 storage: moto's server over real HTTP, presigned SigV4 URLs."""

from __future__ import annotations

import io
import time
import urllib.parse
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from tests.fixtures.stack import Stack, start_stack

pytestmark = pytest.mark.slow

BODY = {"endUserEmail": "alice@your-product.com", "model": "xSD4.5"}


def s3_stack_for(
    tmp_path_factory, redis_server: str, endpoint: str, bucket: str, **env: str
) -> Stack:
    return start_stack(
        tmp_path_factory.mktemp("s3"),
        redis_server,
        XSD_STORAGE="s3",
        XSD_S3_BUCKET=bucket,
        XSD_S3_ENDPOINT_URL=endpoint,
        **env,
    )


@pytest.fixture(scope="module")
def s3_stack(
    tmp_path_factory: pytest.TempPathFactory, redis_server: str, s3_server: str
) -> Iterator[Stack]:
    from tests.fixtures.s3 import make_bucket

    running = s3_stack_for(tmp_path_factory, redis_server, s3_server, make_bucket(s3_server))
    yield running
    running.supervisor.stop(grace=10)


def test_s3_lifecycle(s3_stack: Stack) -> None:
    key = s3_stack.new_key()
    with s3_stack.client(key) as client:
        job = client.create_generation(
            endUserEmail="alice@your-product.com", model="xSD4.5", prompt="a glacier", n=2
        )
        record = s3_stack.wait(client, job["requestId"])
        assert record["status"] == "succeeded", record
        for image in record["images"]:
            query = urllib.parse.parse_qs(urllib.parse.urlparse(image["url"]).query)
            assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
            # moto does not enforce expiry: the signed lifetime is checked here.
            assert 82_700 <= int(query["X-Amz-Expires"][0]) <= 82_800
            response = httpx.get(image["url"])
            assert response.status_code == 200
            assert Image.open(io.BytesIO(response.content)).size == (2048, 2048)
        deleted = client.delete_generation(job["requestId"])
    assert deleted["deleted"] is True
    assert httpx.get(record["images"][0]["url"]).status_code == 404, "objects deleted too"


def test_missing_bucket_fails_every_upload_past_the_retry_bound_and_refunds(
    tmp_path_factory: pytest.TempPathFactory, redis_server: str, s3_server: str
) -> None:
    stack = s3_stack_for(
        tmp_path_factory,
        redis_server,
        s3_server,
        "no-such-bucket",
        XSD_UPLOAD_RETRY_SECONDS="3",
    )
    try:
        key = stack.new_key()
        with stack.client(key) as client:
            job = client.create_generation(
                endUserEmail="alice@your-product.com", model="xSD4.5", prompt="a fox", n=2
            )
            record = stack.wait(client, job["requestId"])
        assert record["status"] == "succeeded"
        assert [i["error"] for i in record["images"]] == [{"code": "storage_failed"}] * 2
        assert record["cost"] == {"xTokens": 0}
        assert stack.balance(key.account) == 1000
    finally:
        stack.supervisor.stop(grace=10)


def test_a_full_spool_stops_the_worker_taking_jobs_until_it_drains(
    tmp_path_factory: pytest.TempPathFactory, redis_server: str, s3_server: str
) -> None:
    """Uploads failing (no such bucket) fill a one-byte spool: the GPU worker says so on
    /readyz and takes no new job until the first one's images are given up."""
    stack = s3_stack_for(
        tmp_path_factory,
        redis_server,
        s3_server,
        "no-such-bucket",
        XSD_UPLOAD_RETRY_SECONDS="8",
        XSD_SPOOL_MAX_BYTES="1",
    )
    readyz = f"http://127.0.0.1:{stack.supervisor.metrics_ports()['gpu-worker']}/readyz"
    try:
        key = stack.new_key()
        with stack.client(key) as client:
            first = client.create_generation(**BODY, prompt="a fox")["requestId"]
            deadline = time.monotonic() + 60
            while "spool is full" not in httpx.get(readyz).text:
                assert time.monotonic() < deadline, "the spool never filled"
                time.sleep(0.2)
            assert httpx.get(readyz).status_code == 503
            second = client.create_generation(**BODY, prompt="a hare")["requestId"]
            time.sleep(3)
            assert client.get_generation(second)["status"] == "queued", "not taken meanwhile"
            assert stack.wait(client, first)["status"] == "succeeded"
            assert stack.wait(client, second)["status"] == "succeeded", "taken once drained"
        assert httpx.get(readyz).status_code == 200
    finally:
        stack.supervisor.stop(grace=10)
