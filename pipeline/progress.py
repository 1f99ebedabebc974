"""Each request's denoising progress, counted from the samples every denoising step
advances.

A request's schedule is its base steps plus, when its images are refined at 2K or 4K, the
refinement's steps (:func:`pipeline.refine.refine_steps`). Its images may be denoised in
different calls (the refiner takes as many rows at once as fit a bucket pass), so steps are
counted per image and reported as their mean: ``done`` reaches ``total`` once every image
of the request has run its whole schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .sdxl import Sample

__all__ = ["ProgressCallback", "StepTally"]

# Called with (request id, steps done, steps in its schedule) after a step advanced it.
ProgressCallback = Callable[[str, int, int], None]


class StepTally:
    """Counts the steps of a batch's requests and reports each one that moved."""

    def __init__(self, report: ProgressCallback) -> None:
        self._report = report
        # id(sample) -> request id, as the pipeline hands samples back by identity.
        self._owner: dict[int, str] = {}
        # request id -> [images, schedule, image-steps done]
        self._counts: dict[str, list[int]] = {}

    def add(self, request_id: str, samples: Sequence[Sample], schedule: int) -> None:
        """A request whose ``samples`` each run ``schedule`` steps."""
        for sample in samples:
            self._owner[id(sample)] = request_id
        self._counts[request_id] = [len(samples), schedule, 0]

    def advanced(self, samples: Sequence[Sample]) -> None:
        """One denoising step ran over ``samples``. A step run again (after running out
        of memory, or a batch retried one request at a time) never counts past the
        schedule."""
        moved: dict[str, None] = {}
        for sample in samples:
            request_id = self._owner.get(id(sample))
            if request_id is not None:
                self._counts[request_id][2] += 1
                moved[request_id] = None
        for request_id in moved:
            images, schedule, done = self._counts[request_id]
            self._report(request_id, min(schedule, done // images), schedule)
