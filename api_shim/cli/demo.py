"""``xsd demo``: the spec's quick example, once, through every real process.

Starts ``xsd up`` on a free port, creates a demo account and key, submits the quick
example (with the ``model`` the contract requires), polls, saves the PNG and stops
everything again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from scheduler import Accounts, Settings, free_port

from ..client import XsdClient
from .generate import save_images
from .supervisor import Supervisor

__all__ = ["run_demo", "QUICK_EXAMPLE"]

log = logging.getLogger(__name__)

QUICK_EXAMPLE = {
    "endUserEmail": "alice@your-product.com",
    "prompt": "Editorial photo of a young woman in a cobalt-blue silk gown on a rainy Tokyo street "
    "at night, neon reflections, 85mm portrait lens",
    "model": "xSD4.5",
}


def _demo_key(settings: Settings, redis_url: str) -> str:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    accounts = Accounts(client, pepper=settings.pepper)
    api_key = accounts.create_key("demo").api_key
    accounts.add_credits("demo", 1000)
    return api_key


def run_demo(settings: Settings, *, out_dir: Path) -> Iterator[Path]:
    """Run the quick example; yields the saved image paths."""
    log_dir = settings.data_dir / "logs"
    supervisor = Supervisor(settings, host="127.0.0.1", port=free_port(), log_dir=log_dir)
    log.info("starting the service; process logs in %s", log_dir.resolve())
    supervisor.start()
    try:
        assert supervisor.redis_url is not None
        with XsdClient(supervisor.base_url, _demo_key(settings, supervisor.redis_url)) as client:
            started = time.monotonic()
            job = client.create_generation(**QUICK_EXAMPLE)
            log.info("submitted %s; polling", job["requestId"])
            record = client.wait(job["requestId"], interval=0.5, timeout=600)
            if record["status"] != "succeeded":
                raise RuntimeError(
                    f"The demo generation ended {record['status']}: {record.get('error')}"
                )
            log.info("succeeded in %.1f s", time.monotonic() - started)
            yield from save_images(client, record, out_dir.resolve())
    finally:
        supervisor.stop()
