"""The object-store contract every backend implements, and the checks they share."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

__all__ = ["ObjectStore", "LocalFile", "validate_content_type"]

# Printable ASCII only: the local backend replays the stored value as a response header, so
# a CR or LF here would be a header injection.
_CONTENT_TYPE = re.compile(r"[\x20-\x7e]{1,255}")


class LocalFile(NamedTuple):
    """A stored object as a file on this machine, for the API to stream."""

    path: Path
    content_type: str


@runtime_checkable
class ObjectStore(Protocol):
    """A flat namespace of immutable blobs addressed by validated keys (see ``storage.keys``).

    Every method raises ``InvalidKey`` for a malformed key or prefix, and ``StorageError``
    for a backend failure not named below.
    """

    def put(self, key: str, data: bytes, *, content_type: str) -> None:
        """Store ``data`` under ``key``, replacing any previous object; ``UploadFailed`` if not."""
        ...

    def get(self, key: str) -> bytes:
        """Return the object's bytes; ``ObjectNotFound`` if there is none."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing object is not an error."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with ``prefix``; return how many there were."""
        ...

    def signed_url(self, key: str, *, expires_at: int) -> str:
        """Return a URL that serves the object without other credentials until ``expires_at``.

        ``expires_at`` is absolute, in unix seconds.
        """
        ...

    def signed_file(self, key: str, *, expires: str, signature: str) -> LocalFile:
        """The file that one of this store's signed URLs names, for the API to serve.

        ``expires`` and ``signature`` are the URL's query values as received. Raises
        ``InvalidSignature`` or ``URLExpired`` for a URL that may not be served,
        ``ObjectNotFound`` when the object is gone, and ``NotServedLocally`` from a store
        whose URLs lead to the store itself rather than to the API.
        """
        ...


def validate_content_type(content_type: str) -> str:
    """Return ``content_type`` if it is 1-255 printable ASCII characters, else ``ValueError``."""
    if not isinstance(content_type, str) or not _CONTENT_TYPE.fullmatch(content_type):
        raise ValueError(
            f"content_type must be 1 to 255 printable ASCII characters, got {content_type!r}."
        )
    return content_type
