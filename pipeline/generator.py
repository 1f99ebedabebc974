"""Requests in, finished images out: bucket, batch, split on OOM, resize, watermark."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

import torch
from PIL import Image

from .buckets import bucket_for
from .components import build_components
from .errors import InvalidInput, PipelineError
from .registry import ModelSpec
from .request import GenerationRequest
from .sdxl import Sample, SDXLPipeline, StepCallback
from .watermark import add_watermark

__all__ = ["Generator", "BatchOutcome", "load_generator", "pick_device"]

log = logging.getLogger(__name__)

# Per request: its images, or the error that stopped it.
BatchOutcome = list[Image.Image] | PipelineError


def pick_device(device: str | None) -> torch.device:
    """The requested device, else CUDA when present, else the CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Generator:
    """A loaded model that turns requests into images."""

    def __init__(self, spec: ModelSpec, pipeline: SDXLPipeline) -> None:
        self.spec = spec
        self.pipeline = pipeline

    def check_inputs(self, request: GenerationRequest) -> None:
        """Fail before any work, naming the argument and its value."""
        if request.width <= 0 or request.height <= 0:
            raise InvalidInput(
                f"width and height must be positive; got {request.width}x{request.height}."
            )
        if not request.seeds:
            raise InvalidInput("seeds must name at least one image.")
        if not 1 <= request.guidance_scale <= 20:
            raise InvalidInput(f"guidance_scale must be in [1, 20]; got {request.guidance_scale}.")
        if not request.prompt.strip():
            raise InvalidInput("prompt must not be empty.")

    def bucket(self, request: GenerationRequest) -> tuple[int, int]:
        """The resolution the request is generated at before resizing."""
        return bucket_for(
            request.width,
            request.height,
            base=self.spec.base_resolution,
            multiple=self.spec.bucket_multiple,
        )

    def samples(self, request: GenerationRequest) -> list[Sample]:
        """The request's images as pipeline samples, in seed order."""
        return [Sample(request.prompt, seed, request.guidance_scale) for seed in request.seeds]

    def generate(
        self, request: GenerationRequest, *, on_step: StepCallback | None = None
    ) -> list[Image.Image]:
        """One request's images, in seed order."""
        (outcome,) = self.generate_batch([request], on_step=on_step)
        if isinstance(outcome, PipelineError):
            raise outcome
        return outcome

    def generate_batch(
        self, requests: Sequence[GenerationRequest], *, on_step: StepCallback | None = None
    ) -> list[BatchOutcome]:
        """Several requests, sharing forward passes where their bucket and step count
        agree. Each request gets its images or its own error: an invalid request, or one
        the model fails on, does not fail its neighbours."""
        outcomes: list[BatchOutcome | None] = [None] * len(requests)
        groups: dict[tuple[int, int, int], list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            try:
                self.check_inputs(request)
            except InvalidInput as exc:
                outcomes[index] = exc
                continue
            steps = request.steps or self.spec.steps
            groups[(*self.bucket(request), steps)].append(index)
        for (width, height, steps), members in groups.items():
            for index, images in self._run_group(
                [(i, requests[i]) for i in members], width, height, steps, on_step
            ):
                outcomes[index] = images
        assert all(outcome is not None for outcome in outcomes)
        return outcomes  # type: ignore[return-value]

    def _run_group(
        self,
        members: list[tuple[int, GenerationRequest]],
        width: int,
        height: int,
        steps: int,
        on_step: StepCallback | None,
    ) -> list[tuple[int, BatchOutcome]]:
        per_request = [self.samples(request) for _, request in members]
        flat = [sample for group in per_request for sample in group]
        try:
            raw = self._forward(flat, width, height, steps, on_step)
        except Exception as exc:
            if len(members) == 1:
                if not isinstance(exc, PipelineError):
                    log.exception("generation failed")
                    exc = PipelineError(f"The model failed ({type(exc).__name__}: {exc}).")
                return [(members[0][0], exc)]
            # Find the culprit: run each request alone so the others still succeed.
            log.warning("batch of %d requests failed (%r); retrying one by one", len(members), exc)
            return [
                outcome
                for member in members
                for outcome in self._run_group([member], width, height, steps, on_step)
            ]
        results, offset = [], 0
        for (index, request), samples in zip(members, per_request, strict=True):
            images = raw[offset : offset + len(samples)]
            offset += len(samples)
            results.append((index, [self.finish(image, request) for image in images]))
        return results

    def _forward(
        self,
        samples: list[Sample],
        width: int,
        height: int,
        steps: int,
        on_step: StepCallback | None,
    ) -> list[Image.Image]:
        """One pipeline call; on out-of-memory, two calls of half the samples each."""
        try:
            return self.pipeline(samples, width=width, height=height, steps=steps, on_step=on_step)
        except torch.cuda.OutOfMemoryError:
            if len(samples) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(samples) // 2
            log.warning("out of memory with %d samples; splitting in two", len(samples))
            return self._forward(samples[:half], width, height, steps, on_step) + self._forward(
                samples[half:], width, height, steps, on_step
            )

    @staticmethod
    def finish(image: Image.Image, request: GenerationRequest) -> Image.Image:
        """Resize to exactly the requested pixels, then mark if asked."""
        if image.size != (request.width, request.height):
            image = image.resize((request.width, request.height), Image.Resampling.LANCZOS)
        return add_watermark(image) if request.watermark else image


def load_generator(spec: ModelSpec, *, device: str | None = None) -> Generator:
    """Build or load ``spec``'s model on a device (CUDA fp16, else CPU float32)."""
    target = pick_device(device)
    dtype = torch.float16 if target.type == "cuda" else torch.float32
    components = build_components(spec, dtype=dtype)
    return Generator(spec, SDXLPipeline(components, device=target, dtype=dtype))
