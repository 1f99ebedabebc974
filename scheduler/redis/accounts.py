"""Accounts, API keys and balances.

An API key is ``xm_live_`` followed by a 12-character key id and a 32-character secret.
Redis keeps only the key id and an HMAC-SHA256 of the whole key under a server-side pepper;
a presented key is found by its id and its digest compared in constant time, so neither a
Redis dump nor response timing reveals a usable key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import time
from dataclasses import dataclass

import redis

from ..errors import AuthenticationFailed, InvalidRequest, NotFound
from . import keys

__all__ = [
    "API_KEY_PREFIX",
    "Principal",
    "NewKey",
    "Share",
    "Accounts",
    "key_id_of",
    "validate_account_name",
]

API_KEY_PREFIX = "xm_live_"
_KEY_ID_LEN = 12
_SECRET_LEN = 32
_ALPHABET = string.ascii_letters + string.digits
_KEY_SHAPE = re.compile(rf"^{API_KEY_PREFIX}[A-Za-z0-9]{{{_KEY_ID_LEN + _SECRET_LEN}}}$")
_ACCOUNT_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the account and the key used (rate limits are per key)."""

    account: str
    key_id: str


@dataclass(frozen=True)
class NewKey:
    """A freshly created key; ``api_key`` is shown once and never stored."""

    api_key: str
    account: str
    webhook_secret: str


@dataclass(frozen=True)
class Share:
    """An account's share of the GPU queues: its ``weight`` in the fair order (an account
    of weight 2 gets twice the images of one of weight 1 when both wait) and its cap on
    images in flight (None: no cap). The cap refuses nothing; it holds jobs back."""

    weight: float = 1.0
    max_inflight_images: int | None = None

    @property
    def label(self) -> str:
        """The account's class for metrics (never its name): capped, weighted or default."""
        if self.max_inflight_images is not None:
            return "capped"
        return "default" if self.weight == 1 else "weighted"


# Weights are ratios between accounts: this range keeps finish tags well inside a double's
# precision however long the pool runs.
MAX_WEIGHT = 1000.0


def _checked_share(weight: float | None, max_inflight_images: int | None) -> None:
    if weight is not None and not 0 < weight <= MAX_WEIGHT:
        raise InvalidRequest(
            f"The weight must be a number above 0 and at most {MAX_WEIGHT:g}; got {weight:g}.",
            param="weight",
        )
    if max_inflight_images is not None and max_inflight_images < 0:
        raise InvalidRequest(
            "The cap on images in flight must be a positive number of images, or 0 for no "
            f"cap; got {max_inflight_images}.",
            param="max_inflight_images",
        )


def validate_account_name(name: str) -> str:
    """Account names become parts of object keys: lowercase letters, digits, ``.-_``."""
    if not _ACCOUNT_NAME.match(name):
        raise InvalidRequest(
            f"Account name {name!r} is invalid: use 1-63 lowercase letters, digits, '.', '-' "
            "or '_', starting with a letter or digit.",
            param="account",
        )
    return name


def key_id_of(api_key: str) -> str:
    """The id of an API key: the characters after the prefix that name its Redis record."""
    return api_key[len(API_KEY_PREFIX) : len(API_KEY_PREFIX) + _KEY_ID_LEN]


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


class Accounts:
    """Account records and key verification."""

    def __init__(self, client: redis.Redis, *, pepper: bytes) -> None:
        self._redis = client
        self._pepper = pepper

    def _digest(self, api_key: str) -> str:
        return hmac.new(self._pepper, api_key.encode(), hashlib.sha256).hexdigest()

    def ensure(self, name: str) -> None:
        """Create the account if it does not exist (balance 0, a new webhook secret)."""
        key = keys.account(validate_account_name(name))
        self._redis.hsetnx(key, "balance", 0)
        self._redis.hsetnx(key, "webhook_secret", "whsec_" + secrets.token_hex(24))
        self._redis.hsetnx(key, "created_ms", int(time.time() * 1000))

    def create_key(self, name: str) -> NewKey:
        """Create the account if needed and a new API key for it."""
        self.ensure(name)
        key_id = _random(_KEY_ID_LEN)
        api_key = f"{API_KEY_PREFIX}{key_id}{_random(_SECRET_LEN)}"
        self._redis.hset(
            keys.api_key(key_id),
            mapping={
                "account": name,
                "digest": self._digest(api_key),
                "created_ms": int(time.time() * 1000),
            },
        )
        return NewKey(api_key=api_key, account=name, webhook_secret=self.webhook_secret(name))

    def revoke_key(self, key_id: str) -> bool:
        """Delete a key; True when it existed."""
        return bool(self._redis.delete(keys.api_key(key_id)))

    def authenticate(self, authorization: str | None) -> Principal:
        """Verify an ``Authorization: Bearer xm_live_...`` header."""
        if not authorization:
            raise AuthenticationFailed("Missing API key: send 'Authorization: Bearer xm_live_...'.")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not _KEY_SHAPE.match(token):
            raise AuthenticationFailed(
                "Malformed Authorization header: expected 'Bearer xm_live_...'."
            )
        key_id = key_id_of(token)
        stored = self._redis.hmget(keys.api_key(key_id), "account", "digest")
        account, digest = stored[0], stored[1]
        # Compare even when the id is unknown, so both failures take the same time.
        expected = digest or "0" * 64
        if not hmac.compare_digest(expected, self._digest(token)) or account is None:
            raise AuthenticationFailed("Invalid API key.")
        return Principal(account=account, key_id=key_id)

    def add_credits(self, name: str, amount: int) -> int:
        """Add xTokens; returns the new balance."""
        if amount <= 0:
            raise InvalidRequest("The amount must be a positive number of xTokens.")
        key = keys.account(validate_account_name(name))
        if not self._redis.exists(key):
            raise NotFound(f"The account {name!r} does not exist.", param="account")
        return int(self._redis.hincrby(key, "balance", amount))

    def info(self, name: str) -> dict[str, int | str]:
        """Balance and creation time."""
        balance, created = self._redis.hmget(keys.account(name), "balance", "created_ms")
        if balance is None:
            raise NotFound(f"The account {name!r} does not exist.", param="account")
        return {"account": name, "balance": int(balance), "created_ms": int(created or 0)}

    def set_share(
        self, name: str, *, weight: float | None = None, max_inflight_images: int | None = None
    ) -> Share:
        """Change an account's weight and cap on images in flight (``0`` removes the cap);
        None leaves a value as it is. Queued jobs keep their place; the cap applies at once."""
        _checked_share(weight, max_inflight_images)
        key = keys.account(validate_account_name(name))
        if not self._redis.exists(key):
            raise NotFound(f"The account {name!r} does not exist.", param="account")
        if weight is not None:
            self._redis.hset(key, "weight", repr(float(weight)))
        if max_inflight_images == 0:
            self._redis.hdel(key, "max_inflight_images")
        elif max_inflight_images is not None:
            self._redis.hset(key, "max_inflight_images", max_inflight_images)
        return self.share(name)

    def share(self, name: str) -> Share:
        """The account's weight and cap (the defaults for an account that has none)."""
        weight, cap = self._redis.hmget(keys.account(name), "weight", "max_inflight_images")
        return Share(
            weight=float(weight) if weight else 1.0,
            max_inflight_images=int(cap) if cap else None,
        )

    def webhook_secret(self, name: str) -> str:
        """The account's webhook signing secret."""
        secret = self._redis.hget(keys.account(name), "webhook_secret")
        if secret is None:
            raise NotFound(f"The account {name!r} does not exist.", param="account")
        return secret
