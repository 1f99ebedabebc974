"""Inference: the model registry and the SDXL-class pipeline. Inputs in, PIL images out.

Knows nothing of HTTP, Redis or object storage. Importing this package is light (no torch):
the HTTP shim uses the registry, token counting and prompt parsing; ``load_generator`` and
``ImageGenerator`` import torch and diffusers on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .buckets import bucket_for
from .errors import InvalidImage, InvalidInput, ModelUnavailable, PipelineError, RequestCancelled
from .images import DecodeBudget, decode_image, encode_png
from .progress import ProgressCallback
from .prompts import LONGEST_TOKEN_BYTES, count_prompt_tokens, enumerate_items
from .registry import ModelRegistry, ModelSpec
from .request import MAX_REFERENCES, GenerationRequest
from .seeds import MAX_SEED, derive_seed

if TYPE_CHECKING:
    from .generator import ImageGenerator, load_generator

__all__ = [
    "DecodeBudget",
    "GenerationRequest",
    "ImageGenerator",
    "InvalidImage",
    "InvalidInput",
    "LONGEST_TOKEN_BYTES",
    "MAX_REFERENCES",
    "MAX_SEED",
    "ModelRegistry",
    "ModelSpec",
    "ModelUnavailable",
    "PipelineError",
    "ProgressCallback",
    "RequestCancelled",
    "bucket_for",
    "count_prompt_tokens",
    "decode_image",
    "derive_seed",
    "encode_png",
    "enumerate_items",
    "load_generator",
]

_HEAVY = {"ImageGenerator", "load_generator"}


def __getattr__(name: str) -> Any:
    # Heavy names resolve on first use, so `import pipeline` never imports torch.
    if name in _HEAVY:
        from . import generator

        return getattr(generator, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
