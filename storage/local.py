"""Local-disk object store with HMAC-signed, expiring URLs.

Layout: the object under key ``K`` is the file ``root/K``; its content type is a one-line
sidecar file ``root/K~type``. ``~`` is outside the key alphabet, so no key can name a sidecar
or one of the temporary files ``put`` writes (``K~tmp...``), and a directory walk can tell
objects from bookkeeping. An object whose sidecar is missing (for the instant between the two
renames of a ``put``, or a file placed by hand) has the type its extension implies. A key
cannot be both an object and a prefix of another key (``a/b`` and ``a/b/c``), since one path
cannot be a file and a directory; our keys never are.

Signed URLs have the form ``{files_url}{key}?expires={expires_at}&signature={hex}`` with
``hex = HMAC-SHA256(signing_key, f"{key}\\n{expires_at}")``. ``files_url`` is the API route
that serves them, given by its owner (this package knows no routes); the route asks
``signed_file`` for the checked file and streams it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import mimetypes
import operator
import os
import tempfile
import time
from pathlib import Path

from storage.base import LocalFile, validate_content_type
from storage.errors import InvalidSignature, ObjectNotFound, StorageError, UploadFailed, URLExpired
from storage.keys import validate_key, validate_prefix

__all__ = ["LocalStore"]

_RESERVED = "~"
_SIDECAR_SUFFIX = _RESERVED + "type"
_TEMP_MARK = _RESERVED + "tmp"
_DEFAULT_CONTENT_TYPE = "application/octet-stream"


class LocalStore:
    """Objects as files under ``root``, served by the API through signed URLs.

    ``files_url`` is the public URL under which the API serves this store's files (e.g.
    ``https://api.example.com/v1/files/``); a signed URL is it followed by the key, and it
    ends in one ``/`` however it is given. ``signing_key`` is the HMAC key for signed URLs
    and must be kept secret.
    """

    def __init__(self, root: Path, *, files_url: str, signing_key: bytes) -> None:
        if not signing_key:
            raise ValueError("signing_key must not be empty: it is what makes signed URLs safe.")
        self.root = Path(root).absolute()
        self.files_url = files_url.rstrip("/") + "/"
        self._signing_key = bytes(signing_key)

    def put(self, key: str, data: bytes, *, content_type: str) -> None:
        """Write the object atomically: readers see the old bytes or the new, never a mix."""
        path = self._path(key)
        validate_content_type(content_type)
        sidecar = path.with_name(path.name + _SIDECAR_SUFFIX)
        pending: dict[Path, str] = {}  # final path -> its temporary, until renamed
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Both files are complete on disk before either is renamed into place, so a
            # failure (a full disk, say) leaves the previous object and its type untouched.
            pending[path] = _write_temporary(path, data)
            pending[sidecar] = _write_temporary(sidecar, content_type.encode())
            for final, temporary in list(pending.items()):
                os.replace(temporary, final)
                del pending[final]
        except OSError as exc:
            raise UploadFailed(
                f"Could not write the object {key!r} under {self.root}: {exc}.", key=key
            ) from exc
        finally:
            for temporary in pending.values():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)

    def get(self, key: str) -> bytes:
        """Return the object's bytes; ``ObjectNotFound`` if there is none."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(f"No object is stored under the key {key!r}.", key=key) from exc
        except OSError as exc:
            raise StorageError(f"Could not read the object {key!r}: {exc}.", key=key) from exc

    def delete(self, key: str) -> None:
        """Remove the object and any directories it leaves empty; a missing object is fine."""
        path = self._path(key)
        for target in (path, path.with_name(path.name + _SIDECAR_SUFFIX)):
            try:
                target.unlink()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                pass
            except OSError as exc:
                raise StorageError(f"Could not delete the object {key!r}: {exc}.", key=key) from exc
        self._prune(path.parent)

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix`` and the directories that held them.

        Returns the number of objects removed; sidecars and stale temporary files are
        removed too but not counted.
        """
        top = self.root / validate_prefix(prefix).rstrip("/")
        if not top.is_dir():
            return 0
        count = 0
        for dirpath, _dirnames, filenames in os.walk(top, topdown=False):
            for name in filenames:
                try:
                    os.unlink(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue  # deleted concurrently; then it is not ours to count
                except OSError as exc:
                    raise StorageError(
                        f"Could not delete {name!r} under the prefix {prefix!r}: {exc}.",
                        key=prefix,
                    ) from exc
                if _RESERVED not in name:
                    count += 1
            # A concurrent put may have refilled the directory; then it stays.
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
        self._prune(top.parent)
        return count

    def signed_url(self, key: str, *, expires_at: int) -> str:
        """Return ``{files_url}{key}?expires=...&signature=...`` for ``verify``."""
        validate_key(key)
        # operator.index refuses floats, whose text form verify could not parse back.
        expires_at = operator.index(expires_at)
        signature = self._sign(key, str(expires_at))
        return f"{self.files_url}{key}?expires={expires_at}&signature={signature}"

    def verify(
        self, key: str, expires: str | int, signature: str, *, now: float | None = None
    ) -> None:
        """Check a signed URL's parts as received; return if it may be served, else raise.

        Raises ``InvalidKey``, ``InvalidSignature`` or ``URLExpired``. The signature is checked
        first and in constant time, so a forged URL reveals nothing about expiry or timing.
        ``now`` (unix seconds) defaults to the current time.
        """
        validate_key(key)
        # The text is signed as received: "0123" is not the "123" that signed_url wrote.
        expires_text = str(expires)
        expected = self._sign(key, expires_text).encode()
        if not hmac.compare_digest(expected, signature.encode("utf-8", "surrogatepass")):
            raise InvalidSignature(
                f"The signature of the URL for {key!r} does not match its key and expiry.", key=key
            )
        # Only the decimal text of an int is ever signed, so a verified value parses.
        if (time.time() if now is None else now) > int(expires_text):
            raise URLExpired(f"The signed URL for {key!r} expired at {expires_text}.", key=key)

    def signed_file(self, key: str, *, expires: str, signature: str) -> LocalFile:
        """The file behind a signed URL, once ``verify`` passes; ``ObjectNotFound`` if the
        object is gone. A concurrent ``delete`` may still remove it before it is read."""
        self.verify(key, expires, signature)
        return LocalFile(self._path(key), self.content_type_of(key))

    def path_for(self, key: str) -> Path:
        """Return the file that holds (or would hold) the object, for streaming.

        The key is validated, but the file's existence is not checked: a concurrent ``delete``
        could remove it before the caller opens it anyway, so the caller handles its absence.
        """
        return self._path(key)

    def content_type_of(self, key: str) -> str:
        """Return the content type given to ``put``; ``ObjectNotFound`` if there is no object."""
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(f"No object is stored under the key {key!r}.", key=key)
        try:
            return path.with_name(path.name + _SIDECAR_SUFFIX).read_text(encoding="ascii")
        except FileNotFoundError:
            guessed, _encoding = mimetypes.guess_type(path.name, strict=False)
            return guessed or _DEFAULT_CONTENT_TYPE

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _sign(self, key: str, expires_text: str) -> str:
        # surrogatepass: query strings can decode to lone surrogates, which must not crash.
        message = f"{key}\n{expires_text}".encode("utf-8", "surrogatepass")
        return hmac.new(self._signing_key, message, hashlib.sha256).hexdigest()

    def _prune(self, directory: Path) -> None:
        # Per-request directories would otherwise pile up forever. rmdir only removes an
        # empty directory, so a directory that a concurrent put has just filled survives.
        while directory != self.root and directory.is_relative_to(self.root):
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent


def _write_temporary(path: Path, data: bytes) -> str:
    """Write ``data`` to a new temporary file beside ``path`` and return its name."""
    # Beside the target because os.replace is atomic only within one filesystem; fsync before
    # the caller renames it, so a crash cannot leave a torn file under the final name.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name + _TEMP_MARK)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        os.unlink(temporary)
        raise
    return temporary
