"""The workers' probe endpoint: ready once started, not ready while something is wrong
(a full upload spool), with the reason in the body."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from scheduler.process import health


@pytest.fixture
def probe() -> Iterator[str]:
    server = health.serve(0, host="127.0.0.1")
    health.ready.set()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    health.problems.clear()


def test_a_full_spool_makes_the_worker_unready_until_it_drains(probe: str) -> None:
    assert httpx.get(f"{probe}/readyz").status_code == 200
    health.problems["spool"] = "the upload spool is full: the object store is failing"
    unready = httpx.get(f"{probe}/readyz")
    assert unready.status_code == 503 and "spool is full" in unready.text
    assert httpx.get(f"{probe}/healthz").status_code == 200, "alive all the same"
    health.problems.pop("spool")
    assert httpx.get(f"{probe}/readyz").status_code == 200
