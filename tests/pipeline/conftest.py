"""One tiny generator for the package's tests (building it costs ~0.2 s, importing
diffusers ~3 s)."""

from __future__ import annotations

import pytest

from pipeline import GenerationRequest, ImageGenerator, ModelRegistry, load_generator


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
