"""The fast-path options on the tiny model: int8 UNet, float8 refused off Hopper-class
GPUs, a bfloat16 VAE, static compilation. Each stays close to the default path's images
(PSNR against the float32 eager pipeline; the bounds leave room under what
``benchmarks.fastpath`` measures, in benchmarks/RESULTS.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pipeline import ImageGenerator, ModelRegistry, ModelUnavailable, load_generator, quantization
from pipeline.acceleration import Acceleration, prepare_unet

from .conftest import request

TINY = ModelRegistry.from_config(None).get("xSD4.5")
# Tiny reads sizes as SDXL sizes: its 64x64 bucket, decoded, resized to 512x512.
SMALL = request(width=512, height=512)


def psnr(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


@pytest.fixture(scope="module")
def baseline(tiny: ImageGenerator):
    (image,) = tiny.generate(SMALL)
    return image


def test_int8_quantizes_the_unet_and_stays_close(baseline) -> None:
    from torchao.quantization import Int8Tensor  # the `quantize` extra, also in `test`

    generator = load_generator(TINY, device="cpu", acceleration=Acceleration(quantize="int8"))
    unet = generator.pipeline.components.unet
    linears = [m for m in unet.modules() if isinstance(m, nn.Linear)]
    assert linears and all(isinstance(m.weight, Int8Tensor) for m in linears)
    (image,) = generator.generate(SMALL)
    assert psnr(baseline, image) >= 35


def test_fp8_is_refused_on_the_cpu() -> None:
    with pytest.raises(ModelUnavailable, match=r"XSD_QUANTIZE=fp8 needs a CUDA GPU .* 8\.9"):
        load_generator(TINY, device="cpu", acceleration=Acceleration(quantize="fp8"))


def test_fp8_is_refused_on_a_gpu_older_than_ada(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA A100")
    with pytest.raises(ModelUnavailable, match="NVIDIA A100 has 8.0"):
        quantization.quantize_unet(nn.Linear(16, 16), "fp8", torch.device("cuda"))


def test_quantizing_without_torchao_says_which_extra(monkeypatch) -> None:
    monkeypatch.setattr(quantization.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelUnavailable, match="`quantize` extra"):
        quantization.quantize_unet(nn.Linear(16, 16), "int8", torch.device("cpu"))


def test_a_bfloat16_vae_decodes_close_to_float32(baseline) -> None:
    generator = load_generator(TINY, device="cpu", acceleration=Acceleration(vae_dtype="bfloat16"))
    components = generator.pipeline.components
    assert components.vae.dtype == torch.bfloat16 and components.unet.dtype == torch.float32
    (image,) = generator.generate(SMALL)
    assert psnr(baseline, image) >= 35


class _Recording(nn.Linear):
    def __init__(self) -> None:
        super().__init__(4, 4)
        self.compiled: dict | None = None

    def compile(self, **kwargs) -> None:
        self.compiled = kwargs


@pytest.mark.parametrize(
    ("mode", "device", "expected"),
    [
        ("off", "cpu", None),
        ("dynamic", "cpu", {"dynamic": True}),
        ("static", "cpu", {"dynamic": False, "mode": None}),
        # CUDA graphs: one launch per step; prepare_unet only sets flags and the layout.
        ("static", "cuda", {"dynamic": False, "mode": "reduce-overhead"}),
    ],
)
def test_compile_modes(mode, device, expected) -> None:
    unet = _Recording()
    prepare_unet(unet, Acceleration(compile=mode), torch.device(device))
    assert unet.compiled == expected


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_static_compile_on_the_cpu_matches_eager(tiny: ImageGenerator) -> None:
    """One tiny shape (a bucket-sized request: no refinement), compiled by inductor: the
    same images as eager, and no new graph for the same shape the second time."""
    from torch._dynamo.utils import counters

    small = request(width=64, height=64, steps=2)
    generator = load_generator(TINY, device="cpu", acceleration=Acceleration(compile="static"))
    (first,) = generator.generate(small)
    graphs = counters["stats"]["unique_graphs"]
    (second,) = generator.generate(small)
    assert counters["stats"]["unique_graphs"] == graphs
    (eager,) = tiny.generate(small)
    assert psnr(eager, first) >= 40 and psnr(first, second) == math.inf
