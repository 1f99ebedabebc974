"""The raw body of ``POST /v1/generations``, read strictly before any validation or debit.

Three gates, cheapest first: the media type must be JSON; the body is read in chunks up to
the size limit (on the event loop: this is I/O, and the limit caps it); then it is parsed
(CPU work: the caller runs :func:`parse_object` in the thread pool) into a JSON object with
no repeated key and no nesting deeper than :data:`MAX_JSON_DEPTH`. A repeated key would
otherwise be read as its last value, so ``"n": 1, "n": 15`` would bill what the client's
own parser may show as 1.
"""

from __future__ import annotations

import json
from email.message import Message
from typing import Any

from fastapi import Request

from .exceptions import ApiError, ErrorCode

__all__ = ["JSON_MEDIA_TYPE", "MAX_JSON_DEPTH", "check_media_type", "parse_object", "read_body"]

JSON_MEDIA_TYPE = "application/json"
# The deepest value the API reads is at depth 2 (sequentialOptions.maxImages, an item of
# references); the slack is for fields it ignores. Anything deeper is refused before it can
# reach a recursive parser or validator.
MAX_JSON_DEPTH = 8


def check_media_type(content_type: str | None) -> None:
    """Refuse a body not labelled ``application/json`` (415); a charset parameter, if any,
    must be UTF-8, the only encoding JSON allows between systems (RFC 8259)."""
    header = Message()
    header["Content-Type"] = content_type or ""
    charset = header.get_param("charset")
    # Message reads a missing or malformed header as text/plain.
    if header.get_content_type() != JSON_MEDIA_TYPE or (
        isinstance(charset, str) and charset.lower() not in ("utf-8", "utf8")
    ):
        raise ApiError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"The request body must be sent as 'Content-Type: {JSON_MEDIA_TYPE}' (UTF-8); "
            f"got {content_type or 'no Content-Type'}.",
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it exceeds ``limit`` bytes."""
    too_large = ApiError(ErrorCode.PAYLOAD_TOO_LARGE, f"The request body exceeds {limit} bytes.")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


class _RepeatedKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _deeper_than(value: Any, limit: int) -> bool:
    # Iterative, so that the check itself cannot recurse.
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = list(node.values())
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _invalid(message: str, *, param: str | None = None) -> ApiError:
    return ApiError(ErrorCode.VALIDATION_ERROR, message, param=param)


def parse_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 ``validation_error`` that says why not."""
    too_deep = f"The request body nests deeper than {MAX_JSON_DEPTH} levels."
    try:
        data = json.loads(raw, object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)
    except _RepeatedKey as exc:
        raise _invalid(
            f"The request body repeats the key {exc.key!r}; send each key once.", param=exc.key
        ) from None
    except RecursionError:
        # The C parser stops at the interpreter's recursion limit (depth ~1000).
        raise _invalid(too_deep) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN, huge integers
        raise _invalid(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise _invalid("The request body must be a JSON object.")
    if _deeper_than(data, MAX_JSON_DEPTH):
        raise _invalid(too_deep)
    return data
