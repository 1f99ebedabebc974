"""Finished images on the GPU worker's local disk until the object store has them.

GPU work must not be thrown away because the object store is down for a while. A job's
PNGs are written to the spool as soon as they are encoded (the memory they held is free
again), and the spool's own uploader threads store them; while the store refuses or
hangs, they try again with backoff, for up to ``XSD_UPLOAD_RETRY_SECONDS`` from the first
failure. Only past that bound is an image ``storage_failed`` (and refunded). The job stays
``processing`` meanwhile, its lease renewed, and the GPU goes on with the next batch: it
never waits for uploads, since nothing but the spool's threads ever calls the store.

The spool is bounded in bytes (``XSD_SPOOL_MAX_BYTES``). Above the bound the worker stops
taking new jobs, and its ``/readyz`` says so, until the spool drains below
:data:`RESUME_FRACTION` of it; what it already runs is still spooled, so the bound can be
passed by at most the images of the batches in flight.

If the worker dies, its spooled images die with it: the job's lease lapses, the beat hands
the job to another worker, which generates it again (charged once, like any takeover). A
starting worker empties what an earlier process left in its spool directory: those jobs
have been, or will be, taken over.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from storage import ObjectStore, StorageError

from .. import metrics
from ..jobs.records import ImageResult
from ..jobs.states import ImageErrorCode

__all__ = ["RESUME_FRACTION", "Upload", "Spool"]

log = logging.getLogger(__name__)

# A full spool takes new jobs again once it is this far below its bound.
RESUME_FRACTION = 0.8
# Waits between tries of one job's uploads: doubling from the first to the last.
_FIRST_WAIT_SECONDS = 1.0
_LAST_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class Upload:
    """One encoded image of a job and where it goes in the store."""

    index: int
    key: str
    data: bytes


@dataclass
class _File:
    index: int
    key: str
    path: Path
    size: int
    result: ImageResult | None = None


@dataclass(order=True)
class _Job:
    """A job whose images are not all stored yet, ordered by its next try."""

    due: float
    order: int
    name: str = field(compare=False)
    files: list[_File] = field(compare=False)
    store: ObjectStore = field(compare=False)
    done: Callable[[list[ImageResult] | None], None] = field(compare=False)
    wanted: Callable[[], bool] = field(compare=False)
    first_failure: float | None = field(default=None, compare=False)
    wait: float = field(default=_FIRST_WAIT_SECONDS, compare=False)


class Spool:
    """Uploads through a local-disk spool; see the module's docstring."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        retry_seconds: float,
        threads: int,
        on_full: Callable[[bool], None] = lambda full: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self._max_bytes, self._retry_seconds = max_bytes, retry_seconds
        self._on_full, self._clock = on_full, clock
        shutil.rmtree(directory, ignore_errors=True)  # an earlier process's: taken over
        directory.mkdir(parents=True, exist_ok=True)
        self._bytes = 0
        self._full = False
        self._due: list[_Job] = []
        self._busy = 0
        self._order = itertools.count()
        self._lock = threading.Condition()
        for number in range(threads):
            threading.Thread(target=self._run, name=f"spool-{number}", daemon=True).start()

    @property
    def bytes(self) -> int:
        """What the spool holds now."""
        return self._bytes

    @property
    def full(self) -> bool:
        """Whether the worker should take no new jobs until the spool drains."""
        return self._full

    def pending(self) -> int:
        """Jobs whose images are not all stored yet."""
        with self._lock:
            return len(self._due) + self._busy

    def submit(
        self,
        name: str,
        uploads: Sequence[Upload],
        *,
        store: ObjectStore,
        done: Callable[[list[ImageResult] | None], None],
        wanted: Callable[[], bool],
    ) -> None:
        """Spool a job's images (``name`` names its directory) for the uploader threads,
        which put them in ``store``.
        ``done`` gets every image's result once each is stored or past the bound, or
        None when ``wanted`` turned false (the job was cancelled, deleted or taken over)
        and what was left is dropped. It is called from an uploader thread and must not
        raise."""
        folder = self.directory / name
        files = []
        with metrics.SPOOL_WRITE.time():
            folder.mkdir(parents=True, exist_ok=True)
            for upload in uploads:
                path = folder / f"{upload.index}.png"
                path.write_bytes(upload.data)
                files.append(_File(upload.index, upload.key, path, len(upload.data)))
        self._count(sum(file.size for file in files))
        self._queue(_Job(self._clock(), next(self._order), name, files, store, done, wanted))

    def _queue(self, job: _Job) -> None:
        with self._lock:
            heapq.heappush(self._due, job)
            self._lock.notify()

    def _attempt(self, job: _Job) -> None:
        """Try every image not stored yet; finish the job, or put it back in line."""
        if not job.wanted():
            self._drop(job)
            job.done(None)
            return
        for file in job.files:
            if file.result is not None:
                continue
            started = time.monotonic()
            try:
                job.store.put(file.key, file.path.read_bytes(), content_type="image/png")
            except StorageError as exc:
                metrics.STORAGE_FAILURES.labels("put").inc()
                if job.first_failure is None:
                    job.first_failure = self._clock()
                    log.warning("could not store an image of %s (%s); retrying", job.name, exc)
                continue
            metrics.STORAGE_UPLOAD.observe(time.monotonic() - started)
            file.result = ImageResult(index=file.index, key=file.key, size=file.size)
        now = self._clock()
        if job.first_failure is not None and now - job.first_failure >= self._retry_seconds:
            for file in job.files:
                if file.result is None:
                    log.error("gave up storing image %d of %s", file.index, job.name)
                    metrics.STORAGE_GIVE_UPS.inc()
                    file.result = ImageResult(index=file.index, error=ImageErrorCode.STORAGE_FAILED)
        if all(file.result is not None for file in job.files):
            self._drop(job)
            job.done([file.result for file in job.files if file.result is not None])
            return
        job.due, job.wait = now + job.wait, min(_LAST_WAIT_SECONDS, job.wait * 2)
        self._queue(job)

    def _drop(self, job: _Job) -> None:
        shutil.rmtree(self.directory / job.name, ignore_errors=True)
        self._count(-sum(file.size for file in job.files))

    def _count(self, change: int) -> None:
        with self._lock:
            self._bytes += change
            full = self._full
            if not full and self._bytes > self._max_bytes:
                full = True
            elif full and self._bytes < RESUME_FRACTION * self._max_bytes:
                full = False
            changed, self._full = full != self._full, full
        metrics.SPOOL_BYTES.set(self._bytes)
        if changed:
            log.warning(
                "the upload spool holds %d bytes: %s new jobs",
                self._bytes,
                "taking no" if full else "taking",
            )
            self._on_full(full)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._due or self._due[0].due > self._clock():
                    self._lock.wait(self._due[0].due - self._clock() if self._due else None)
                job = heapq.heappop(self._due)
                self._busy += 1
            try:
                self._attempt(job)
            except Exception:  # a bug, or the disk: the job is left to be taken over
                log.exception("could not upload the images of %s; dropping them", job.name)
                self._drop(job)
                job.done(None)
            finally:
                with self._lock:
                    self._busy -= 1
