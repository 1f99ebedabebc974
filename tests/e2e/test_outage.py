"""Redis away: the real API process answers every call 503 service_unavailable with
Retry-After (never 500), logs the outage once and its end once, and serves again as soon
as Redis is back; the client retries through it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from api_shim.client import XsdClient
from api_shim.sse import parse_events
from scheduler.redis.accounts import Accounts
from scheduler.redis.embedded import EmbeddedRedis, free_port

pytestmark = pytest.mark.slow

PEPPER = "outage-pepper"
BODY = {"endUserEmail": "alice@your-product.com", "model": "xSD4.5", "prompt": "a lighthouse"}


class Api:
    """``xsd api`` on its own Redis, which the test stops and starts."""

    def __init__(self, tmp_path: Path) -> None:
        self.redis = EmbeddedRedis(tmp_path / "redis")
        url = self.redis.start()
        self.key = Accounts(redis.Redis.from_url(url), pepper=PEPPER.encode()).create_key("acme")
        Accounts(redis.Redis.from_url(url), pepper=PEPPER.encode()).add_credits("acme", 100)
        self.port = free_port()
        self.log = tmp_path / "api.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("XSD_")}
        env.update(
            XSD_REDIS_URL=url,
            XSD_DATA_DIR=str(tmp_path / "data"),
            XSD_API_KEY_PEPPER=PEPPER,
            XSD_URL_SIGNING_KEY="outage-signing-key",
            PYTHONUNBUFFERED="1",
        )
        with self.log.open("w") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "api_shim", "api", "--port", str(self.port)],
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while not self._ready():
            assert self.process.poll() is None and time.monotonic() < deadline, self.text()
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def http(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.key.api_key}"}
        return httpx.Client(base_url=self.base, headers=headers, timeout=10)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.redis.stop()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    running = Api(tmp_path)
    yield running
    running.close()


def test_every_endpoint_answers_503_while_redis_is_away(api: Api) -> None:
    with api.http() as client:
        created = client.post("/v1/generations", json=BODY).json()
        api.redis.stop()
        calls = [
            ("POST", "/v1/generations", BODY),
            ("GET", f"/v1/generations/{created['requestId']}", None),
            ("GET", f"/v1/generations/{created['requestId']}/events", None),
            ("GET", "/v1/generations", None),
            ("POST", f"/v1/generations/{created['requestId']}/cancel", None),
            ("DELETE", f"/v1/generations/{created['requestId']}", None),
            ("GET", "/v1/end-users/alice@your-product.com/usage", None),
            ("DELETE", "/v1/end-users/alice@your-product.com/generations", None),
            ("GET", "/v1/account", None),
        ]
        for _ in range(3):
            for method, path, body in calls:
                response = client.request(method, path, json=body)
                assert response.status_code == 503, (method, path, response.text)
                assert response.json()["error"]["code"] == "service_unavailable"
                assert int(response.headers["Retry-After"]) >= 1
        assert httpx.get(f"{api.base}/readyz").status_code == 503
        api.redis.start()
        assert client.get("/v1/account").json()["balance"] == {"xTokens": 90}
    log = api.text()
    assert log.count("Redis is unreachable") == 1, log[-3000:]
    assert log.count("Redis is back") == 1, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def test_an_event_stream_ends_with_an_error_event_when_redis_goes(api: Api) -> None:
    with api.http() as client:
        job_id = client.post("/v1/generations", json=BODY).json()["requestId"]
        with client.stream("GET", f"/v1/generations/{job_id}/events") as response:
            events = parse_events(response.iter_lines())
            assert next(events).data["status"] == "queued"
            api.redis.stop()
            error = next(events)
            assert error.event == "error"
            assert error.data["error"]["code"] == "service_unavailable"
            assert set(error.data["error"]) == {"code", "message", "param"}
            assert list(events) == [], "the stream ends"
    assert "Traceback" not in api.text(), api.text()[-3000:]


def test_the_client_retries_a_post_through_the_outage(api: Api) -> None:
    """Redis comes back while the client retries: the POST is accepted once, and charged
    once, under the one Idempotency-Key the client made up."""
    api.redis.stop()
    threading.Timer(3.0, api.redis.start).start()
    with XsdClient(api.base, api.key.api_key, retry_seconds=60) as client:
        job = client.create_generation(**BODY)
        assert job["status"] == "queued"
        assert client.account()["balance"] == {"xTokens": 90}
