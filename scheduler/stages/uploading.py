"""Uploading for the generate stage: a finished job's images encoded (PNG with provenance)
by a background pool into the upload spool (:mod:`scheduler.stages.spool`), which stores
them through object-store outages, and the job's success recorded once they are stored.

The GPU starts its next pass as soon as the images are handed over: encoding, storing and
recording happen off its thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from pipeline import encode_png

from .. import metrics
from ..jobs.objects import image_key
from ..jobs.records import ImageResult, JobRecord
from ..jobs.sizes import size_class
from ..jobs.states import FinishOutcome, JobErrorCode
from ..jobs.store import Finish
from ..redis.outage import is_outage
from ..runtime import Runtime
from .claiming import Claimed, LeaseKeeper, fail_claimed
from .lifecycle import delete_objects
from .spool import Spool, Upload

__all__ = ["Uploader", "encode_images", "when_spool_full", "PNG_COMPRESS_LEVEL"]

log = logging.getLogger(__name__)

# A low zlib level: CPU time on a GPU worker is dearer than object-store bytes (with
# pipeline.png's run-length matching, higher levels gain little anyway).
PNG_COMPRESS_LEVEL = 3

# Called with True when the spool fills and False when it has drained (the worker process
# stops and resumes taking jobs, and says so on /readyz).
_spool_hooks: list[Callable[[bool], None]] = []


def when_spool_full(hook: Callable[[bool], None]) -> None:
    """Register what this process does when its upload spool fills or drains."""
    _spool_hooks.append(hook)


def _spool_full(full: bool) -> None:
    for hook in _spool_hooks:
        hook(full)


def encode_images(record: JobRecord, images: Sequence[Image.Image]) -> list[Upload]:
    """Each image as a PNG with its provenance (model alias, request id), and its key."""
    provenance = {
        "Software": "xSD worker pool",
        "xsd:model": record.model,
        "xsd:requestId": record.id,
    }
    uploads = []
    for index, image in enumerate(images):
        with metrics.PNG_ENCODE.labels(size_class(image.width, image.height)).time():
            data = encode_png(image, text=provenance, compress_level=PNG_COMPRESS_LEVEL)
        uploads.append(
            Upload(index=index, key=image_key(record.account, record.id, index), data=data)
        )
    return uploads


class Uploader:
    """The encoding pool, the bound on jobs waiting for it, and the spool of one worker
    process. Each job is stored and recorded through its own runtime (the one its batch
    ran with)."""

    def __init__(self, runtime: Runtime, leases: LeaseKeeper) -> None:
        settings = runtime.settings
        self._leases = leases
        self._pool = ThreadPoolExecutor(settings.upload_threads, thread_name_prefix="encode")
        # Bounds the jobs whose images wait in memory to be encoded into the spool; the
        # store's speed does not count (the spool's threads upload).
        self._backlog = threading.BoundedSemaphore(settings.batch_max_jobs * 2)
        self._spool = Spool(
            settings.spool_path,
            max_bytes=settings.spool_max_bytes,
            retry_seconds=settings.upload_retry_seconds,
            threads=settings.upload_threads,
            on_full=_spool_full,
        )

    def submit(self, claimed: Claimed, images: list[Image.Image]) -> None:
        """Hand a generated job over (it is settled from now on); waits while the backlog
        is full."""
        with metrics.UPLOAD_BACKLOG_WAIT.time():
            self._backlog.acquire()
        claimed.settled = True
        self._pool.submit(self._encode, claimed, images)

    def _encode(self, claimed: Claimed, images: list[Image.Image]) -> None:
        """Background: encode the images into the spool, which stores them and then records
        the job (:meth:`_record`). The GPU may go on once they are on disk."""
        job_id = claimed.record.id
        try:
            uploads = encode_images(claimed.record, images)
            self._spool.submit(
                f"{job_id}.{claimed.job.attempt}",
                uploads,
                store=claimed.job.runtime.store,
                done=lambda results: self._record(claimed, results),
                wanted=lambda: not self._leases.lost(job_id),
            )
        except Exception:
            log.exception("could not spool the images of %s", job_id)
            fail_claimed(
                self._leases, claimed, JobErrorCode.INTERNAL_ERROR, "The images could not be stored"
            )
        finally:
            self._backlog.release()

    def _record(self, claimed: Claimed, results: list[ImageResult] | None) -> None:
        """From the spool: record the success of a job whose images are stored (those that
        could not be, past the retry bound, are refunded). None: the job was taken from this
        worker while its images waited; whoever took it records its outcome."""
        runtime = claimed.job.runtime
        try:
            if results is None:
                return
            with metrics.RECORD_SUCCESS.time():
                finish = _through_outage(
                    lambda: claimed.job.succeed(results),
                    seconds=runtime.settings.lease_seconds,
                )
            if finish.outcome is FinishOutcome.GONE:
                # Deleted while we ran: nothing may keep what we just uploaded.
                delete_objects(runtime, claimed.record)
        except Exception:
            log.exception("could not record the success of %s", claimed.record.id)
            fail_claimed(
                self._leases,
                claimed,
                JobErrorCode.INTERNAL_ERROR,
                "The success could not be recorded",
            )
        finally:
            self._leases.release(claimed.record.id)


def _through_outage(call: Callable[[], Finish], *, seconds: float) -> Finish:
    """``call``, tried again each second while Redis is away, for up to ``seconds`` (the
    images are stored: recording that is worth a wait, not a regeneration)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_outage(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)
