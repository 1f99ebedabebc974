"""A stand-in for the model, for benchmarks only: GPU time without a GPU.

:class:`StandInGenerator` has the interface the GPU worker uses (``spec``, ``bucket``,
``generate_batch``) but computes nothing: a batch holds the worker for
``seconds_per_megapixel`` times the batch's output megapixels (1 MP = 1024x1024, the
scheduler's unit), in as many simulated denoising steps as the real model takes, and
returns images of the exact output sizes. Waiting is ``time.sleep``, which releases the
GIL, so the worker's other threads (uploads, lease renewal) run as they would beside a
GPU. The images are a gradient with per-seed noise: PNG encodes them at a cost and size
near a photograph's, where a flat colour would compress to almost nothing.

The worker uses it only when ``XSD_STAND_IN_SECONDS_PER_MEGAPIXEL`` is set
(:func:`scheduler.stages.running.generator_for`); it is never served by default.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from .errors import PipelineError, RequestCancelled
from .geometry import Size
from .progress import ProgressCallback
from .registry import SDXL_RANDOM, ModelRegistry, ModelSpec
from .request import GenerationRequest
from .watermark import add_watermark

__all__ = ["MEGAPIXEL", "StandInGenerator", "noise_image"]

# The scheduler's megapixel (XSD_GPU_PIXEL_BUDGET counts 1024x1024 images).
MEGAPIXEL = 1024 * 1024
# Per-channel noise amplitude: about 4 bits a channel survive PNG's filters, so an image
# encodes to roughly 60% of its raw size, as SDXL's photographs do.
_NOISE_LEVELS = 16

# Per request: its images, or the error that stopped it (pipeline.generator.BatchOutcome).
BatchOutcome = list[Image.Image] | PipelineError


def noise_image(size: Size, seed: int) -> Image.Image:
    """An RGB image of ``size``: a left-to-right gradient with noise that depends on
    ``seed``."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, _NOISE_LEVELS, size=(size.height, size.width, 3), dtype=np.uint8)
    ramp = (np.arange(size.width, dtype=np.uint32) * (255 - _NOISE_LEVELS) // size.width).astype(
        np.uint8
    )
    return Image.fromarray(noise + ramp[None, :, None], "RGB")


class StandInGenerator:
    """Holds the worker for the GPU time a batch would take; returns real-size images.

    ``spec`` is SDXL's (1024 base resolution, 64-pixel buckets, 30 steps) under the
    alias served, so the worker plans passes as it would for the real model. ``clock``
    and ``sleep`` are injectable for tests."""

    def __init__(
        self,
        alias: str,
        seconds_per_megapixel: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if seconds_per_megapixel <= 0:
            raise ValueError(f"seconds_per_megapixel must be positive; got {seconds_per_megapixel}")
        sdxl = ModelRegistry.from_config(None, include_benchmark_models=True).get(SDXL_RANDOM)
        self.spec: ModelSpec = dataclasses.replace(
            sdxl, alias=alias, description="Benchmark stand-in: sleeps, no model."
        )
        self.seconds_per_megapixel = seconds_per_megapixel
        self._clock = clock
        self._sleep = sleep

    def bucket(self, request: GenerationRequest) -> Size:
        """The bucket the real model would generate ``request`` at (plans the passes)."""
        return self.spec.bucket(request.width, request.height)

    def seconds(self, request: GenerationRequest) -> float:
        """The GPU time the stand-in charges for ``request``: its output pixels, all
        images."""
        pixels = request.width * request.height * len(request.seeds)
        return self.seconds_per_megapixel * pixels / MEGAPIXEL

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_step: Callable[[int, float], None] | None = None,
        cancelled: Callable[[str], bool] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> list[BatchOutcome]:
        """Each request's images after the batch's GPU time, spread over the steps of the
        longest request; a request for which ``cancelled`` turns true leaves at the next
        step, gets :class:`RequestCancelled` and stops costing time. ``on_progress`` hears
        each active request's simulated steps (the stand-in does not refine: 30 at any
        size)."""
        start = self._clock()
        # Made up front, inside the batch's time: the wait below absorbs their cost.
        images = [
            [noise_image(request.size, seed) for seed in request.seeds] for request in requests
        ]
        active = set(range(len(requests)))
        steps = max((request.steps or self.spec.steps for request in requests), default=0)
        deadline = start
        for step in range(steps):
            if cancelled is not None:
                active -= {i for i in active if cancelled(requests[i].request_id)}
            if not active:
                break
            step_start = self._clock()
            deadline += sum(self.seconds(requests[i]) for i in active) / steps
            self._sleep(max(0.0, deadline - step_start))
            if on_step is not None:
                on_step(step, self._clock() - step_start)
            if on_progress is not None:
                for i in sorted(active):
                    own = requests[i].steps or self.spec.steps
                    on_progress(requests[i].request_id, min(step + 1, own), own)
        outcomes: list[BatchOutcome] = []
        for index, request in enumerate(requests):
            if index not in active:
                outcomes.append(RequestCancelled(f"{request.request_id} was stopped."))
            elif request.watermark:
                outcomes.append([add_watermark(image) for image in images[index]])
            else:
                outcomes.append(images[index])
        return outcomes
