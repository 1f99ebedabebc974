"""API keys: hashed with a pepper, verified in constant time, never stored in clear."""

from __future__ import annotations

import pytest
import redis

from scheduler.errors import AuthenticationFailed, InvalidRequest, NotFound
from scheduler.redis import keys
from scheduler.redis.accounts import Accounts


@pytest.fixture
def accounts(redis_client: redis.Redis) -> Accounts:
    return Accounts(redis_client, pepper=b"pepper")


def test_key_round_trip(accounts: Accounts, redis_client: redis.Redis) -> None:
    new = accounts.create_key("acme")
    assert new.api_key.startswith("xm_live_") and len(new.api_key) == 8 + 44
    assert new.webhook_secret.startswith("whsec_")
    principal = accounts.authenticate(f"Bearer {new.api_key}")
    assert principal.account == "acme"
    dump = str({k: redis_client.hgetall(k) for k in redis_client.keys("xsd:key:*")})
    assert new.api_key not in dump and new.api_key[20:] not in dump


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Basic abc",
        "Bearer xm_live_short",
        "Bearer xm_test_" + "a" * 44,
        "xm_live_" + "a" * 44,
    ],
)
def test_malformed_headers(accounts: Accounts, header: str | None) -> None:
    with pytest.raises(AuthenticationFailed):
        accounts.authenticate(header)


def test_wrong_secret_and_unknown_id(accounts: Accounts) -> None:
    new = accounts.create_key("acme")
    tampered = new.api_key[:-1] + ("A" if new.api_key[-1] != "A" else "B")
    with pytest.raises(AuthenticationFailed, match="Invalid API key"):
        accounts.authenticate(f"Bearer {tampered}")
    with pytest.raises(AuthenticationFailed, match="Invalid API key"):
        accounts.authenticate("Bearer xm_live_" + "Z" * 44)


def test_another_pepper_rejects_the_key(accounts: Accounts, redis_client: redis.Redis) -> None:
    new = accounts.create_key("acme")
    with pytest.raises(AuthenticationFailed):
        Accounts(redis_client, pepper=b"other").authenticate(f"Bearer {new.api_key}")


def test_revoked_key(accounts: Accounts) -> None:
    new = accounts.create_key("acme")
    key_id = new.api_key[8:20]
    assert accounts.revoke_key(key_id)
    with pytest.raises(AuthenticationFailed):
        accounts.authenticate(f"Bearer {new.api_key}")


def test_credits(accounts: Accounts, redis_client: redis.Redis) -> None:
    accounts.create_key("acme")
    assert accounts.add_credits("acme", 50) == 50
    assert accounts.info("acme")["balance"] == 50
    with pytest.raises(InvalidRequest):
        accounts.add_credits("acme", 0)
    with pytest.raises(NotFound):
        accounts.add_credits("ghost", 5)
    assert redis_client.hget(keys.account("acme"), "balance") == "50"


@pytest.mark.parametrize("name", ["", "Acme", "a/b", "../x", "a b", "x" * 64, "-a"])
def test_account_names(accounts: Accounts, name: str) -> None:
    with pytest.raises(InvalidRequest):
        accounts.create_key(name)
