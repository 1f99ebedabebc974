"""The upload spool against a real local store that fails on demand: images outlive an
outage, the bound is kept, and a full spool says so."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from scheduler.jobs.records import ImageResult
from scheduler.stages.spool import Spool, Upload
from storage import LocalStore, UploadFailed


class FlakyStore(LocalStore):
    """A local store whose uploads fail while ``down`` is set."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, files_url="http://files.test/v1/files/", signing_key=b"k")
        self.down = threading.Event()
        self.attempts = 0

    def put(self, key: str, data: bytes, *, content_type: str) -> None:
        self.attempts += 1
        if self.down.is_set():
            raise UploadFailed("connection refused (simulated outage)", key=key)
        super().put(key, data, content_type=content_type)


class Outcome:
    """What ``done`` was called with, once it was."""

    def __init__(self) -> None:
        self.results: list[ImageResult] | None = None
        self.called = threading.Event()

    def __call__(self, results: list[ImageResult] | None) -> None:
        self.results = results
        self.called.set()


def uploads(count: int, size: int = 1000) -> list[Upload]:
    return [
        Upload(index=i, key=f"images/acme/req_x/{i}.png", data=bytes([i]) * size)
        for i in range(count)
    ]


@pytest.fixture
def store(tmp_path: Path) -> FlakyStore:
    return FlakyStore(tmp_path / "objects")


def spool(tmp_path: Path, **options) -> Spool:
    settings = {"max_bytes": 10**9, "retry_seconds": 60.0, "threads": 2, **options}
    return Spool(tmp_path / "spool", **settings)


def test_images_wait_out_an_outage_and_are_stored(tmp_path: Path, store: FlakyStore) -> None:
    store.down.set()
    spooled = spool(tmp_path)
    done = Outcome()
    spooled.submit("req_x.1", uploads(3), store=store, done=done, wanted=lambda: True)
    time.sleep(1.5)
    assert not done.called.is_set(), "nothing is given up while the store is down"
    assert store.attempts >= 2 * 3, "it kept trying"
    assert spooled.bytes == 3000 and len(list((tmp_path / "spool" / "req_x.1").iterdir())) == 3
    store.down.clear()
    assert done.called.wait(10)
    assert [result.key for result in done.results or []] == [u.key for u in uploads(3)]
    assert all(result.size == 1000 for result in done.results or [])
    assert store.get("images/acme/req_x/2.png") == bytes([2]) * 1000
    assert spooled.bytes == 0 and not (tmp_path / "spool" / "req_x.1").exists()


def test_past_the_bound_an_image_is_storage_failed(tmp_path: Path, store: FlakyStore) -> None:
    store.down.set()
    spooled = spool(tmp_path, retry_seconds=1.0)
    done = Outcome()
    spooled.submit("req_x.1", uploads(2), store=store, done=done, wanted=lambda: True)
    assert done.called.wait(10)
    assert [result.error for result in done.results or []] == ["storage_failed"] * 2
    assert spooled.bytes == 0


def test_a_job_taken_away_is_dropped(tmp_path: Path, store: FlakyStore) -> None:
    store.down.set()
    spooled = spool(tmp_path)
    done, wanted = Outcome(), threading.Event()
    wanted.set()
    spooled.submit("req_x.1", uploads(2), store=store, done=done, wanted=wanted.is_set)
    time.sleep(0.2)
    wanted.clear()  # cancelled, deleted or taken over by another worker
    assert done.called.wait(10) and done.results is None
    assert spooled.bytes == 0 and not (tmp_path / "spool" / "req_x.1").exists()


def test_a_full_spool_says_so_until_it_drains(tmp_path: Path, store: FlakyStore) -> None:
    changes: list[bool] = []
    store.down.set()
    spooled = spool(tmp_path, max_bytes=2500, on_full=changes.append)
    first, second = Outcome(), Outcome()
    spooled.submit("req_a.1", uploads(2), store=store, done=first, wanted=lambda: True)
    assert changes == [] and not spooled.full
    spooled.submit("req_b.1", uploads(2), store=store, done=second, wanted=lambda: True)
    assert changes == [True] and spooled.full, "4000 bytes > 2500"
    store.down.clear()
    assert first.called.wait(10) and second.called.wait(10)
    assert changes == [True, False] and not spooled.full


def test_what_an_earlier_process_left_is_cleared(tmp_path: Path, store: FlakyStore) -> None:
    leftover = tmp_path / "spool" / "req_old.3"
    leftover.mkdir(parents=True)
    (leftover / "0.png").write_bytes(b"png")
    spool(tmp_path)
    assert not leftover.exists(), "its job has been, or will be, taken over"
