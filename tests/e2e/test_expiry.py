"""URL lifetime for real: with a short TTL, URLs die and the record reads ``expired``."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.fixtures.stack import Stack, start_stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def short_ttl_stack(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("ttl"), redis_server, XSD_URL_TTL_SECONDS="4")
    yield running
    running.supervisor.stop(grace=10)


def test_urls_and_records_expire(short_ttl_stack: Stack) -> None:
    stack = short_ttl_stack
    key = stack.new_key()
    with stack.client(key) as client:
        job = client.create_generation(
            endUserEmail="alice@your-product.com", model="xSD4.5", prompt="a red kite"
        )
        record = stack.wait(client, job["requestId"])
        assert record["status"] == "succeeded"
        url = record["images"][0]["url"]
        assert httpx.get(url).status_code == 200
        time.sleep(5)
        assert httpx.get(url).status_code == 403
        expired = client.get_generation(job["requestId"])
    assert expired["status"] == "expired"
    assert "images" not in expired and "cost" not in expired
    assert expired["finishedAt"] == record["finishedAt"]
    assert stack.balance(key.account) == 990, "expiry is not a refund"
