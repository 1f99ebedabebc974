"""S3Store against moto's S3 server over real HTTP."""

from __future__ import annotations

import functools
import time
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError

from storage import (
    InvalidKey,
    NotServedLocally,
    ObjectNotFound,
    ObjectStore,
    S3Store,
    StorageError,
    UploadFailed,
)
from storage.s3 import MAX_PRESIGN_SECONDS

KEY = "images/acct_1/req_1/0.png"
PNG = b"\x89PNG\r\n\x1a\n fake image bytes"


@functools.cache
def raw_client(endpoint_url: str) -> BaseClient:
    """A plain client that looks at the bucket without going through S3Store."""
    return boto3.session.Session().client(
        "s3",
        region_name="us-east-1",
        endpoint_url=endpoint_url,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def all_keys(endpoint_url: str, bucket: str) -> list[str]:
    pages = raw_client(endpoint_url).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@pytest.fixture
def store(s3_bucket: tuple[str, str]) -> S3Store:
    endpoint_url, bucket = s3_bucket
    return S3Store(bucket, endpoint_url=endpoint_url)


def test_is_an_object_store(store: S3Store) -> None:
    assert isinstance(store, ObjectStore)


def test_client_config(store: S3Store) -> None:
    config = store._client.meta.config
    assert config.signature_version == "s3v4"
    assert config.s3 == {"addressing_style": "path"}
    # botocore reads max_attempts=3 as three retries, so four attempts in all.
    assert config.retries == {"mode": "standard", "total_max_attempts": 4}
    assert (config.connect_timeout, config.read_timeout) == (5, 30)


def test_put_get_round_trip_with_content_type(store: S3Store, s3_bucket: tuple[str, str]) -> None:
    endpoint_url, bucket = s3_bucket
    store.put(KEY, PNG, content_type="image/png")
    assert store.get(KEY) == PNG
    head = raw_client(endpoint_url).head_object(Bucket=bucket, Key=KEY)
    assert head["ContentType"] == "image/png"
    assert head["ContentLength"] == len(PNG)


def test_get_missing_raises_object_not_found(store: S3Store) -> None:
    with pytest.raises(ObjectNotFound) as caught:
        store.get(KEY)
    assert isinstance(caught.value.__cause__, ClientError)
    assert caught.value.key == KEY


def test_delete_is_idempotent(store: S3Store) -> None:
    store.put(KEY, PNG, content_type="image/png")
    store.delete(KEY)
    store.delete(KEY)
    with pytest.raises(ObjectNotFound):
        store.get(KEY)


def test_delete_prefix_pages_and_batches(s3_bucket: tuple[str, str]) -> None:
    endpoint_url, bucket = s3_bucket
    store = S3Store(bucket, endpoint_url=endpoint_url, page_size=7)
    for i in range(30):
        store.put(f"images/acct_1/req_{i % 3}/{i}.png", b"x", content_type="image/png")
    store.put("images/acct_10/req_9/0.png", b"x", content_type="image/png")
    store.put("refs/req_1/0.png", b"x", content_type="image/png")

    assert store.delete_prefix("images/acct_1/req_0/") == 10
    assert store.delete_prefix("images/acct_1/") == 20
    assert store.delete_prefix("images/acct_1/") == 0
    assert all_keys(endpoint_url, bucket) == ["images/acct_10/req_9/0.png", "refs/req_1/0.png"]


def test_prefix_is_prepended_and_hidden(s3_bucket: tuple[str, str]) -> None:
    endpoint_url, bucket = s3_bucket
    tenant = S3Store(bucket, endpoint_url=endpoint_url, prefix="tenant-a/")
    bare = S3Store(bucket, endpoint_url=endpoint_url)
    tenant.put(KEY, PNG, content_type="image/png")
    bare.put(KEY, b"other", content_type="image/png")

    assert all_keys(endpoint_url, bucket) == [KEY, f"tenant-a/{KEY}"]
    assert tenant.get(KEY) == PNG
    assert bare.get(f"tenant-a/{KEY}") == PNG
    assert urlsplit(tenant.signed_url(KEY, expires_at=int(time.time()) + 60)).path == (
        f"/{bucket}/tenant-a/{KEY}"
    )

    assert tenant.delete_prefix("images/") == 1
    assert all_keys(endpoint_url, bucket) == [KEY]
    tenant.delete(KEY)
    assert bare.get(KEY) == b"other"


@pytest.mark.parametrize("prefix", ["tenant-a", "/tenant-a/", "../", "a//"])
def test_invalid_store_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(InvalidKey):
        S3Store("bucket", prefix=prefix, endpoint_url="http://127.0.0.1:9")


def test_presigned_url_serves_the_object(store: S3Store) -> None:
    store.put(KEY, PNG, content_type="image/png")
    expires_at = int(time.time()) + 23 * 3600
    url = store.signed_url(KEY, expires_at=expires_at)

    query = parse_qs(urlsplit(url).query)
    # moto does not enforce expiry, so the lifetime the URL carries is checked here.
    assert abs(int(query["X-Amz-Expires"][0]) - 23 * 3600) <= 1
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]

    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == PNG
    assert response.headers["content-type"] == "image/png"


def test_the_api_serves_no_file_of_a_bucket(store: S3Store) -> None:
    store.put(KEY, PNG, content_type="image/png")
    with pytest.raises(NotServedLocally):
        store.signed_file(KEY, expires="4000000000", signature="0" * 64)


def test_presigned_url_lifetime_bounds(store: S3Store) -> None:
    past = store.signed_url(KEY, expires_at=int(time.time()) - 100)
    assert parse_qs(urlsplit(past).query)["X-Amz-Expires"] == ["1"]
    limit = store.signed_url(KEY, expires_at=int(time.time()) + MAX_PRESIGN_SECONDS - 5)
    assert int(parse_qs(urlsplit(limit).query)["X-Amz-Expires"][0]) <= MAX_PRESIGN_SECONDS
    with pytest.raises(ValueError, match="seven|604800"):
        store.signed_url(KEY, expires_at=int(time.time()) + MAX_PRESIGN_SECONDS + 60)


def test_put_to_a_missing_bucket_raises_upload_failed(s3_server: str) -> None:
    store = S3Store("no-such-bucket-here", endpoint_url=s3_server)
    with pytest.raises(UploadFailed) as caught:
        store.put(KEY, PNG, content_type="image/png")
    assert isinstance(caught.value.__cause__, ClientError)
    assert "no-such-bucket-here" in str(caught.value)
    # Other operations on a missing bucket are storage failures, not "not found".
    with pytest.raises(StorageError) as read_error:
        store.get(KEY)
    assert not isinstance(read_error.value, ObjectNotFound)


def test_unreachable_endpoint_raises_upload_failed() -> None:
    # Port 9 (discard) is closed on the test host: the connection is refused at once.
    # A client of our own, without retries, also exercises the client= parameter.
    client = boto3.session.Session().client(
        "s3",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        config=Config(signature_version="s3v4", retries={"total_max_attempts": 1}),
    )
    store = S3Store("bucket", client=client)
    with pytest.raises(UploadFailed) as caught:
        store.put(KEY, PNG, content_type="image/png")
    assert caught.value.__cause__ is not None


def test_ensure_bucket_creates_once(s3_server: str) -> None:
    store = S3Store("ensure-bucket-test", endpoint_url=s3_server)
    store.ensure_bucket()
    store.ensure_bucket()
    store.put(KEY, PNG, content_type="image/png")
    assert store.get(KEY) == PNG


def test_ensure_bucket_in_another_region(s3_server: str) -> None:
    store = S3Store("ensure-bucket-eu", endpoint_url=s3_server, region="eu-west-1")
    store.ensure_bucket()
    location = raw_client(s3_server).get_bucket_location(Bucket="ensure-bucket-eu")
    assert location["LocationConstraint"] == "eu-west-1"


def test_keys_are_validated_before_any_request(store: S3Store) -> None:
    for call in (
        lambda: store.put("../x", PNG, content_type="image/png"),
        lambda: store.get("a//b"),
        lambda: store.delete("/abs"),
        lambda: store.delete_prefix("images"),
        lambda: store.signed_url("a/../b", expires_at=int(time.time()) + 60),
    ):
        with pytest.raises(InvalidKey):
            call()


def test_page_size_is_bounded() -> None:
    with pytest.raises(ValueError, match="page_size"):
        S3Store("bucket", endpoint_url="http://127.0.0.1:9", page_size=1001)


def test_separate_signing_credentials(s3_bucket: tuple[str, str]) -> None:
    endpoint, bucket = s3_bucket
    store = S3Store(bucket, endpoint_url=endpoint, signing_credentials=("AKIASIGNER", "secret"))
    store.put("images/a/b/0.png", b"png", content_type="image/png")
    url = store.signed_url("images/a/b/0.png", expires_at=int(time.time()) + 82_800)
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Credential"][0].startswith("AKIASIGNER/")
    assert httpx.get(url).content == b"png"
