"""The storage package's exceptions, one hierarchy.

::

    StorageError                  any failure of an object store, including backend errors
    ├── ObjectNotFound            no object under that key
    ├── UploadFailed              an object could not be written
    ├── InvalidKey                a key or prefix outside the allowed alphabet and shape
    ├── InvalidSignature          a local signed URL whose signature does not verify
    ├── URLExpired                a local signed URL, correctly signed, past its expiry
    └── NotServedLocally          a store whose signed URLs do not lead to the API

``InvalidSignature`` and ``URLExpired`` come only from ``LocalStore``: S3 checks its own
presigned URLs, and its ``signed_file`` raises ``NotServedLocally``. Callers that only need
to know "storage failed" catch ``StorageError``.
"""

from __future__ import annotations

__all__ = [
    "StorageError",
    "ObjectNotFound",
    "UploadFailed",
    "InvalidKey",
    "InvalidSignature",
    "URLExpired",
    "NotServedLocally",
]


class StorageError(Exception):
    """Base of every error the storage package raises. Messages are full sentences."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key


class ObjectNotFound(StorageError):
    """No object is stored under the key."""


class UploadFailed(StorageError):
    """The object could not be written; the backend's exception is chained as the cause."""


class InvalidKey(StorageError):
    """The key or prefix is empty, too long, or has a segment outside ``[A-Za-z0-9._-]``."""


class InvalidSignature(StorageError):
    """A local signed URL's signature does not match its key and expiry."""


class URLExpired(StorageError):
    """A local signed URL carries a valid signature but its expiry time has passed."""


class NotServedLocally(StorageError):
    """The store's signed URLs lead to the store itself (S3), so the API serves no files."""
