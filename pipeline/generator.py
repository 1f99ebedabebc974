"""Requests in, finished images out: bucket, batch, resize, watermark."""

from __future__ import annotations

import torch
from PIL import Image

from .buckets import bucket_for
from .components import build_components
from .errors import InvalidInput
from .registry import ModelSpec
from .request import GenerationRequest
from .sdxl import Sample, SDXLPipeline, StepCallback
from .watermark import add_watermark

__all__ = ["Generator", "load_generator", "pick_device"]


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

    def generate(
        self, request: GenerationRequest, *, on_step: StepCallback | None = None
    ) -> list[Image.Image]:
        """The request's images, in seed order."""
        self.check_inputs(request)
        width, height = self.bucket(request)
        samples = [Sample(request.prompt, seed, request.guidance_scale) for seed in request.seeds]
        raw = self.pipeline(
            samples,
            width=width,
            height=height,
            steps=request.steps or self.spec.steps,
            on_step=on_step,
        )
        return [self.finish(image, request) for image in raw]

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
