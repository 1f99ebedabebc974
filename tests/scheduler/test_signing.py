"""Webhook signatures exactly as the spec defines them."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from api_shim.client import verify_webhook
from scheduler.net.signing import SignatureError, sign, signature_headers, verify

SECRET = "whsec_test"
BODY = b'{"requestId":"req_x","status":"succeeded"}'


def test_signature_is_hmac_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1700000000, BODY) == f"v1={expected}"


def test_headers_verify() -> None:
    headers = signature_headers(SECRET, BODY, now=1700000000)
    assert headers["X-XMode-Timestamp"] == "1700000000"
    verify_webhook(SECRET, BODY, headers, now=1700000100)


@pytest.mark.parametrize(
    ("body", "secret", "now", "match"),
    [
        (BODY + b" ", SECRET, 1700000000, "does not match"),
        (BODY, "whsec_other", 1700000000, "does not match"),
        (BODY, SECRET, 1700000301, "older than"),
        (BODY, SECRET, 1699999000, "older than"),
    ],
)
def test_rejections(body: bytes, secret: str, now: int, match: str) -> None:
    headers = signature_headers(SECRET, BODY, now=1700000000)
    with pytest.raises(SignatureError, match=match):
        verify_webhook(secret, body, headers, now=now)


def test_missing_or_garbled_headers() -> None:
    with pytest.raises(SignatureError):
        verify(SECRET, BODY, signature=None, timestamp="1", now=1)
    with pytest.raises(SignatureError):
        verify(SECRET, BODY, signature="v1=00", timestamp="soon", now=1)
