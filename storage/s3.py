"""S3 object store (AWS or any S3-compatible server) with presigned GET URLs.

A presigned URL dies with the credentials that signed it, whatever its ``ExpiresIn`` says.
With IRSA or other STS session credentials that is about an hour, so the API's 23-hour URLs
need a long-lived signing identity (an IAM user's access key, kept as a secret) or CloudFront
signed URLs in front of the bucket. SigV4 itself caps ``ExpiresIn`` at seven days.
``signing_credentials`` gives that identity a client of its own that only signs URLs, so
uploads and deletes keep using the workload's short-lived (IRSA) credentials.
"""

from __future__ import annotations

import operator
import time

import boto3
from boto3.exceptions import Boto3Error
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from storage.base import LocalFile, validate_content_type
from storage.errors import NotServedLocally, ObjectNotFound, StorageError, UploadFailed
from storage.keys import validate_key, validate_prefix

__all__ = ["S3Store", "MAX_PRESIGN_SECONDS"]

MAX_PRESIGN_SECONDS = 7 * 24 * 3600
# S3 returns at most 1000 keys per list page and accepts at most 1000 per delete_objects.
_MAX_PAGE_SIZE = 1000

_BOTO_ERRORS = (BotoCoreError, ClientError, Boto3Error)


class S3Store:
    """Objects in one S3 bucket, optionally under a key prefix the caller never sees.

    ``endpoint_url`` points at an S3-compatible server (MinIO, moto) and switches to
    path-style addressing. ``client`` replaces the boto3 client this class would build;
    ``endpoint_url`` and ``region`` are then ignored. ``page_size`` (1-1000) is how many keys
    ``delete_prefix`` lists and deletes per request; only tests need less than the maximum.
    ``signing_credentials`` (access key id, secret) sign the presigned URLs and nothing else.
    """

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        prefix: str = "",
        client: BaseClient | None = None,
        page_size: int = _MAX_PAGE_SIZE,
        signing_credentials: tuple[str, str] | None = None,
    ) -> None:
        if not bucket:
            raise ValueError("bucket must name an S3 bucket, got an empty string.")
        if not 1 <= page_size <= _MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {_MAX_PAGE_SIZE}, got {page_size}.")
        self.bucket = bucket
        self.region = region
        self.prefix = validate_prefix(prefix) if prefix else ""
        self._page_size = page_size
        self._client = client if client is not None else _make_client(endpoint_url, region)
        # Signing is local (no request is made), so this client never touches the bucket.
        self._signer = (
            _make_client(endpoint_url, region, credentials=signing_credentials)
            if signing_credentials
            else self._client
        )

    def put(self, key: str, data: bytes, *, content_type: str) -> None:
        """Upload the object with its content type; ``UploadFailed`` on any S3 error."""
        full_key = self._full_key(key)
        validate_content_type(content_type)
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=full_key, Body=data, ContentType=content_type
            )
        except _BOTO_ERRORS as exc:
            raise UploadFailed(
                f"Could not upload {full_key!r} to the bucket {self.bucket!r}: {_reason(exc)}.",
                key=key,
            ) from exc

    def get(self, key: str) -> bytes:
        """Return the object's bytes; ``ObjectNotFound`` if S3 has no such key."""
        full_key = self._full_key(key)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=full_key)
            return response["Body"].read()
        except ClientError as exc:
            if _error_code(exc) == "NoSuchKey":
                raise ObjectNotFound(
                    f"No object is stored under the key {key!r} in the bucket {self.bucket!r}.",
                    key=key,
                ) from exc
            raise self._failure(f"read {full_key!r}", exc, key=key) from exc
        except _BOTO_ERRORS as exc:
            raise self._failure(f"read {full_key!r}", exc, key=key) from exc

    def delete(self, key: str) -> None:
        """Remove the object; S3 itself treats a missing key as deleted."""
        full_key = self._full_key(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=full_key)
        except _BOTO_ERRORS as exc:
            raise self._failure(f"delete {full_key!r}", exc, key=key) from exc

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix``, one list page and one batch delete at a time.

        Returns the number of objects removed. Deleting the keys of a page before fetching the
        next is safe: the continuation token marks a position in key order, not a snapshot.
        """
        full_prefix = self.prefix + validate_prefix(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket,
            Prefix=full_prefix,
            PaginationConfig={"PageSize": self._page_size},
        )
        count = 0
        try:
            for page in pages:
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if not keys:
                    continue
                response = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True}
                )
                errors = response.get("Errors", [])
                if errors:
                    first = errors[0]
                    raise StorageError(
                        f"Could not delete {len(errors)} of {len(keys)} objects under "
                        f"{full_prefix!r} in the bucket {self.bucket!r}; the first, "
                        f"{first.get('Key')!r}, failed with {first.get('Code')}: "
                        f"{first.get('Message')}.",
                        key=prefix,
                    )
                count += len(keys)
        except _BOTO_ERRORS as exc:
            action = f"delete the objects under {full_prefix!r}"
            raise self._failure(action, exc, key=prefix) from exc
        return count

    def signed_url(self, key: str, *, expires_at: int) -> str:
        """Return a presigned GET URL valid until ``expires_at`` (unix seconds, at most 7 days).

        Raises ``ValueError`` beyond SigV4's seven-day limit. See the module docstring for why
        session credentials make the real lifetime shorter.
        """
        full_key = self._full_key(key)
        expires_at = operator.index(expires_at)
        # At least one second: an already-past expiry still yields a URL, one that fails.
        expires_in = max(1, expires_at - int(time.time()))
        if expires_in > MAX_PRESIGN_SECONDS:
            raise ValueError(
                f"expires_at is {expires_in} seconds away; S3 presigned URLs (SigV4) last at "
                f"most {MAX_PRESIGN_SECONDS} seconds."
            )
        try:
            return self._signer.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": full_key},
                ExpiresIn=expires_in,
            )
        except _BOTO_ERRORS as exc:
            raise self._failure(f"presign a URL for {full_key!r}", exc, key=key) from exc

    def signed_file(self, key: str, *, expires: str, signature: str) -> LocalFile:
        """Always ``NotServedLocally``: presigned URLs lead to the bucket, not to the API."""
        raise NotServedLocally(
            f"The bucket {self.bucket!r} serves its objects through presigned URLs.", key=key
        )

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist.

        For local development and tests only: production buckets, with their lifecycle
        rules, encryption and access policy, are provisioned by the operator.
        """
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _error_code(exc) not in ("404", "NoSuchBucket"):
                raise self._failure("look the bucket up", exc) from exc
        except _BOTO_ERRORS as exc:
            raise self._failure("look the bucket up", exc) from exc
        # us-east-1 is the one region that rejects an explicit LocationConstraint.
        options = (
            {}
            if self.region == "us-east-1"
            else {"CreateBucketConfiguration": {"LocationConstraint": self.region}}
        )
        try:
            self._client.create_bucket(Bucket=self.bucket, **options)
        except ClientError as exc:
            # Another process may have created it between our check and our create.
            if _error_code(exc) != "BucketAlreadyOwnedByYou":
                raise self._failure("create the bucket", exc) from exc
        except _BOTO_ERRORS as exc:
            raise self._failure("create the bucket", exc) from exc

    def _full_key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _failure(self, action: str, exc: Exception, *, key: str | None = None) -> StorageError:
        return StorageError(
            f"Could not {action} in the bucket {self.bucket!r}: {_reason(exc)}.", key=key
        )


def _make_client(
    endpoint_url: str | None, region: str, *, credentials: tuple[str, str] | None = None
) -> BaseClient:
    # Custom endpoints rarely resolve virtual-host bucket names (bucket.localhost), hence
    # path-style there; AWS itself keeps its default.
    s3_options = {"addressing_style": "path"} if endpoint_url else None
    config = Config(
        signature_version="s3v4",
        s3=s3_options,
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=5,
        read_timeout=30,
    )
    # A private Session: boto3's default session is shared and not safe to build clients
    # from in several threads at once.
    session = boto3.session.Session()
    keys = (
        {"aws_access_key_id": credentials[0], "aws_secret_access_key": credentials[1]}
        if credentials
        else {}
    )
    return session.client(
        "s3", region_name=region, endpoint_url=endpoint_url, config=config, **keys
    )


def _reason(exc: Exception) -> str:
    # botocore messages sometimes end with a full stop and ours always add one.
    return str(exc).rstrip(".")


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
