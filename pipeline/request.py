"""What the pipeline is asked to make (light: no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from .geometry import Size

__all__ = ["MAX_REFERENCES", "GenerationRequest"]

# The spec's limit of reference images per request.
MAX_REFERENCES = 10


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """One request's images: exactly ``len(seeds)`` of ``width x height``.

    ``references`` condition every image through the model's IP-Adapter, each in the role
    the prompt names for it ("image_1 for the face"). A ``sequential`` request's images are
    the frames of one series: generated together, with shared self-attention, one prompt
    each from what the prompt enumerates.
    """

    request_id: str
    model: str
    prompt: str
    width: int
    height: int
    seeds: tuple[int, ...]
    guidance_scale: float
    watermark: bool = False
    references: tuple[Image.Image, ...] = field(default=(), compare=False)
    sequential: bool = False
    steps: int | None = None

    @property
    def size(self) -> Size:
        """The images' size, ``width x height``."""
        return Size(width=self.width, height=self.height)
