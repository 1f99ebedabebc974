"""Object storage: local disk and S3 backends with signed, expiring URLs."""

from storage import errors
from storage.base import LocalFile, ObjectStore
from storage.errors import *  # noqa: F403  (exactly the errors' own __all__)
from storage.local import LocalStore
from storage.s3 import S3Store

# The errors are part of the surface: whoever stores objects catches them.
__all__ = ["ObjectStore", "LocalFile", "LocalStore", "S3Store", *errors.__all__]
