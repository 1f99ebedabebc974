"""The embedded redis-server restarts on its port and password, from its AOF."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import redis

from scheduler.redis.embedded import EmbeddedRedis


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_restart_keeps_url_and_acknowledged_writes(tmp_path: Path, signum: int) -> None:
    server = EmbeddedRedis(tmp_path)
    url = server.start()
    try:
        client = redis.Redis.from_url(url)
        for value in range(1, 201):
            client.set("counter", value)  # each one acknowledged before the next
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert server.pid is not None
        os.kill(server.pid, signum)
        server.stop()  # reaps it
        assert server.start() == url
        # Redis writes the AOF before it replies: killing the process (not the machine)
        # loses no acknowledged write.
        assert redis.Redis.from_url(url).get("counter") == b"200"
    finally:
        server.stop()
