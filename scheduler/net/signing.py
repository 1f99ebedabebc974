"""Webhook signatures, as the spec defines them.

``X-XMode-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<rawBody>")>`` and
``X-XMode-Timestamp: <unix seconds>``. The secret is the account's whole ``whsec_...``
string, UTF-8 encoded. Receivers reject deliveries older than five minutes so a captured
delivery cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "MAX_AGE_SECONDS",
    "SignatureError",
    "sign",
    "signature_headers",
    "verify",
]

SIGNATURE_HEADER = "X-XMode-Signature"
TIMESTAMP_HEADER = "X-XMode-Timestamp"
MAX_AGE_SECONDS = 300


class SignatureError(ValueError):
    """A webhook delivery whose signature or timestamp does not verify."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``v1=<hex>`` signature of a body sent at ``timestamp``."""
    message = str(timestamp).encode() + b"." + body
    return "v1=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_headers(secret: str, body: bytes, *, now: float | None = None) -> dict[str, str]:
    """The two headers of a delivery of ``body``."""
    timestamp = int(time.time() if now is None else now)
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: sign(secret, timestamp, body)}


def verify(
    secret: str,
    body: bytes,
    *,
    signature: str | None,
    timestamp: str | None,
    now: float | None = None,
    max_age: int = MAX_AGE_SECONDS,
) -> None:
    """Check a delivery; raise :class:`SignatureError` unless it is authentic and fresh.

    Pass the raw request body exactly as received: re-serialised JSON will not verify.
    """
    if not signature or not timestamp:
        raise SignatureError("The delivery has no signature or no timestamp header.")
    try:
        sent = int(timestamp)
    except ValueError as exc:
        raise SignatureError(f"The timestamp {timestamp!r} is not a unix time.") from exc
    current = time.time() if now is None else now
    if abs(current - sent) > max_age:
        raise SignatureError(f"The delivery is older than {max_age} seconds (or from the future).")
    if not hmac.compare_digest(sign(secret, sent, body), signature.strip()):
        raise SignatureError("The signature does not match the body.")
