"""A real HTTP server (uvicorn in a thread) over a private Redis; no workers, so the jobs
these tests create stay queued unless a test moves them on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from fastapi import FastAPI

from api_shim.app import create_app
from scheduler.redis.accounts import NewKey
from scheduler.redis.embedded import free_port
from scheduler.runtime import Runtime, init
from scheduler.settings import Settings

VALID = {
    "endUserEmail": "alice@your-product.com",
    "prompt": "Editorial photo of a cat in space, cinematic, 85mm portrait lens",
    "model": "xSD4.5",
}
RATE_LIMIT = 20
# Above the prompt's character bound, so that bound is what refuses a long prompt.
MAX_BODY_BYTES = 100_000


@dataclass
class Api:
    """The running API and helpers."""

    base_url: str
    runtime: Runtime

    def new_key(self, credits: int = 1000) -> NewKey:
        name = f"a{time.monotonic_ns()}"
        new = self.runtime.accounts.create_key(name)
        if credits:
            self.runtime.accounts.add_credits(name, credits)
        return new

    def balance(self, key: NewKey) -> int:
        return int(self.runtime.accounts.info(key.account)["balance"])

    def http(self, key: NewKey | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key.api_key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=10)

    def post(self, key: NewKey, body: Any, **kwargs: Any) -> httpx.Response:
        with self.http(key) as client:
            return client.post("/v1/generations", json=body, **kwargs)


@contextmanager
def serving(runtime: Runtime, app: FastAPI | None = None) -> Iterator[str]:
    """The API over ``runtime`` (or ``app``, made from it), served by uvicorn in a thread
    on ``settings.port``; yields its base URL."""
    port = runtime.settings.port
    server = uvicorn.Server(
        uvicorn.Config(app or create_app(runtime), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="package")
def api(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[Api]:
    """The API on a free port, on its own Redis database."""
    redis_url = redis_server.rsplit("/", 1)[0] + "/15"
    redis.Redis.from_url(redis_url).flushdb()
    data_dir: Path = tmp_path_factory.mktemp("api")
    settings = Settings(
        data_dir=data_dir,
        redis_url=redis_url,
        port=free_port(),
        rate_limit_per_minute=RATE_LIMIT,
        max_body_bytes=MAX_BODY_BYTES,
    )
    runtime = init(settings)
    with serving(runtime) as base_url:
        yield Api(base_url=base_url, runtime=runtime)
