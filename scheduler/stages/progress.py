"""Denoising progress from the GPU to the records, at a rate Redis does not notice.

The pipeline reports every step of every request (:mod:`pipeline.progress`); a
:class:`ProgressWriter` keeps the latest count of each job of a pass and writes them all in
one pipelined round trip at the first step, then at most once per ``interval``, and once
more when the pass ends (so a job shows its whole schedule done while it uploads). Each
write is guarded by the job's attempt (``progress.lua``): a worker that lost a job never
overwrites the progress of a newer attempt, and a terminal record is left alone.
Progress is advisory: a write that fails (Redis away) is dropped, never the pass.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import redis

from ..jobs.store import JobStore

__all__ = ["PROGRESS_INTERVAL_SECONDS", "ProgressWriter"]

log = logging.getLogger(__name__)

# At most one write per pass per this many seconds (all the pass's jobs in one round trip).
PROGRESS_INTERVAL_SECONDS = 1.0


class ProgressWriter:
    """The progress of one pass's jobs (job id -> the attempt this worker claimed)."""

    def __init__(
        self,
        jobs: JobStore,
        attempts: dict[str, int],
        *,
        interval: float = PROGRESS_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._jobs, self._attempts = jobs, attempts
        self._interval, self._clock = interval, clock
        self._pending: dict[str, tuple[int, int]] = {}
        self._last_write = -math.inf
        # Round trips made so far (what the capacity model counts).
        self.writes = 0

    def report(self, job_id: str, done: int, total: int) -> None:
        """The pipeline's report for one job (a :data:`pipeline.ProgressCallback`)."""
        if job_id not in self._attempts:
            return
        self._pending[job_id] = (done, total)
        if self._clock() - self._last_write >= self._interval:
            self.flush()

    def flush(self) -> None:
        """Write what changed since the last write, if anything did."""
        if not self._pending:
            return
        batch = [
            (job_id, self._attempts[job_id], done, total)
            for job_id, (done, total) in self._pending.items()
        ]
        self._pending.clear()
        self._last_write = self._clock()
        self.writes += 1
        try:
            self._jobs.record_progress(batch)
        except redis.RedisError as exc:
            log.debug("progress of %d jobs not recorded: %r", len(batch), exc)
