"""Object storage: local disk and S3 backends with signed, expiring URLs."""

from storage.base import LocalFile, ObjectStore
from storage.errors import (
    InvalidKey,
    InvalidSignature,
    NotServedLocally,
    ObjectNotFound,
    StorageError,
    UploadFailed,
    URLExpired,
)
from storage.local import LocalStore
from storage.s3 import S3Store

__all__ = [
    "ObjectStore",
    "LocalFile",
    "LocalStore",
    "S3Store",
    "StorageError",
    "ObjectNotFound",
    "UploadFailed",
    "InvalidKey",
    "InvalidSignature",
    "URLExpired",
    "NotServedLocally",
]
