"""Key and prefix validation, the one gate every backend puts keys through."""

from __future__ import annotations

import pytest

from storage.errors import InvalidKey
from storage.keys import MAX_KEY_LENGTH, validate_key, validate_prefix

VALID_KEYS = [
    "images/acct_1/req_3xN7kQ1aJpL9wDvE/0.png",
    "refs/req_3xN7kQ1aJpL9wDvE/0.png",
    "a",
    "a/b.c-d_e/...",
    "x" * MAX_KEY_LENGTH,
]

INVALID_KEYS = [
    "",
    "/images/a/0.png",
    "../x",
    "a/../../b",
    "a/./b",
    ".",
    "..",
    "a//b",
    "a/b/",
    "a\\b",
    "..\\x",
    "a/b\x00c",
    "a/b c",
    "a/é.png",
    "a/b?c",
    "a/%2e%2e/b",
    "x" * (MAX_KEY_LENGTH + 1),
]


@pytest.mark.parametrize("key", VALID_KEYS)
def test_valid_keys_pass_unchanged(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize("key", INVALID_KEYS)
def test_invalid_keys_raise(key: str) -> None:
    with pytest.raises(InvalidKey):
        validate_key(key)


def test_non_string_key_raises_invalid_key() -> None:
    with pytest.raises(InvalidKey, match="must be a string"):
        validate_key(b"images/a/0.png")  # type: ignore[arg-type]


def test_error_message_is_a_sentence_and_shortens_long_keys() -> None:
    with pytest.raises(InvalidKey) as caught:
        validate_key("y" * 10_000)
    message = str(caught.value)
    assert message.endswith(".")
    assert len(message) < 300


@pytest.mark.parametrize("prefix", ["images/", "images/acct_1/", "refs/req_1/"])
def test_valid_prefixes(prefix: str) -> None:
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize(
    "prefix", ["", "/", "images", "/images/", "../", "images/../", "a//", "images/ac*/"]
)
def test_invalid_prefixes(prefix: str) -> None:
    with pytest.raises(InvalidKey):
        validate_prefix(prefix)
