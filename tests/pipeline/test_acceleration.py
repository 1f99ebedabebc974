"""Device options: precision, attention kernel, and what CPU hosts refuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import ModelRegistry, ModelUnavailable, load_generator
from pipeline.acceleration import Acceleration

from .conftest import request

TINY = ModelRegistry.from_config(None).get("xSD4.5")


def test_auto_precision_is_half_on_cuda_only() -> None:
    assert Acceleration().torch_dtype(torch.device("cpu")) == torch.float32
    assert Acceleration().torch_dtype(torch.device("cuda")) == torch.float16
    assert Acceleration(dtype="bfloat16").torch_dtype(torch.device("cuda")) == torch.bfloat16


def test_the_model_precision_applies_unless_xsd_dtype_is_set() -> None:
    cpu = torch.device("cpu")
    assert Acceleration().torch_dtype(cpu, "bfloat16") == torch.bfloat16
    assert Acceleration(dtype="float32").torch_dtype(cpu, "bfloat16") == torch.float32
    assert Acceleration().torch_dtype(torch.device("cuda"), "auto") == torch.float16


def test_xformers_needs_cuda_and_the_package() -> None:
    with pytest.raises(ModelUnavailable, match="xformers"):
        load_generator(TINY, device="cpu", acceleration=Acceleration(attention="xformers"))


def test_half_precision_unet_keeps_a_float32_vae_through_refinement() -> None:
    """The GPU's mix (half-precision UNet and text encoders, float32 VAE) through the
    whole path, 2K refinement included, here in bfloat16 since the CPU has it."""
    generator = load_generator(TINY, device="cpu", acceleration=Acceleration(dtype="bfloat16"))
    components = generator.pipeline.components
    assert components.unet.dtype == torch.bfloat16 and components.vae.dtype == torch.float32
    (image,) = generator.generate(request(width=2048, height=2048))
    assert image.size == (2048, 2048)
    assert np.asarray(image).std() > 1  # an image, not a constant (NaNs decode to one)
