"""What the pipeline is asked to make (light: no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

__all__ = ["GenerationRequest"]


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """One request's images: exactly ``len(seeds)`` of ``width x height``.

    ``references`` are carried but do not condition the images yet: reference conditioning
    (IP-Adapter) is not part of this pipeline so far.
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
