"""Validation of object keys and key prefixes, shared by every backend.

Keys look like ``images/<account>/<requestId>/0.png`` or ``refs/<requestId>/0.png``. The
rules are strict enough that a valid key is also a safe relative path on any filesystem and
a URL path that needs no quoting: segments of ``[A-Za-z0-9._-]``, no empty, ``.`` or ``..``
segment, no leading ``/``, at most ``MAX_KEY_LENGTH`` characters.
"""

from __future__ import annotations

import re

from storage.errors import InvalidKey

__all__ = ["MAX_KEY_LENGTH", "validate_key", "validate_prefix"]

MAX_KEY_LENGTH = 512

_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a valid object key, else raise ``InvalidKey``."""
    _check(key, kind="key")
    return key


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` unchanged if it is a valid key prefix, else raise ``InvalidKey``.

    A prefix is one or more whole segments followed by ``/`` (``images/acct/``), so that it
    names a directory on disk and never matches part of a segment in S3 (``images/ac``).
    """
    _check(prefix, kind="prefix")
    return prefix


def _check(value: object, *, kind: str) -> None:
    if not isinstance(value, str):
        raise InvalidKey(f"An object {kind} must be a string, not {type(value).__name__}.")
    shown = _shorten(value)
    if not value:
        raise InvalidKey(f"An object {kind} must not be empty.")
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidKey(
            f"The object {kind} {shown} is {len(value)} characters long; "
            f"the limit is {MAX_KEY_LENGTH}.",
            key=value,
        )
    if value.startswith("/"):
        raise InvalidKey(f"The object {kind} {shown} must not start with '/'.", key=value)
    body = value
    if kind == "prefix":
        if not value.endswith("/"):
            raise InvalidKey(f"The key prefix {shown} must end with '/'.", key=value)
        body = value[:-1]
    for segment in body.split("/"):
        if not _SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise InvalidKey(
                f"The object {kind} {shown} has the segment {_shorten(segment)}; segments must "
                "be non-empty, not '.' or '..', and use only letters, digits, '.', '_' and '-'.",
                key=value,
            )


def _shorten(value: str) -> str:
    # Keys arrive from URLs; an error message must not echo an arbitrarily long one back.
    return repr(value) if len(value) <= 80 else repr(value[:80]) + "..."
