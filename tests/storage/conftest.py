"""Storage tests use the shared S3 server fixtures; the root conftest may not list them yet."""

from tests.fixtures.s3 import s3_bucket, s3_server  # noqa: F401
