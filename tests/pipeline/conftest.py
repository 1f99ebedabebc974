"""One tiny generator for the package's tests (building it costs ~0.2 s, importing
diffusers ~3 s)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from pipeline import GenerationRequest, ImageGenerator, ModelRegistry, load_generator
from pipeline.prompts import clip_tokenizer

if TYPE_CHECKING:
    from transformers import CLIPTokenizer


@pytest.fixture(scope="session")
def tiny() -> ImageGenerator:
    return load_generator(ModelRegistry.from_config(None).get("xSD4.5"), device="cpu")


def request(**changes) -> GenerationRequest:
    base = dict(
        request_id="req_test",
        model="xSD4.5",
        prompt="a lighthouse at dawn",
        width=2048,
        height=2048,
        seeds=(7,),
        guidance_scale=7.5,
    )
    return GenerationRequest(**{**base, **changes})


def clip_tokenizers() -> tuple[CLIPTokenizer, CLIPTokenizer]:
    """SDXL's two tokenizers from our CLIP vocabulary (no hub); the second pads with "!"."""
    from transformers import CLIPTokenizer

    model = json.loads(clip_tokenizer().to_str())["model"]
    merges = [tuple(pair) for pair in model["merges"]]
    first = CLIPTokenizer(vocab=model["vocab"], merges=merges, model_max_length=77)
    second = CLIPTokenizer(vocab=model["vocab"], merges=merges, model_max_length=77, pad_token="!")
    return first, second
