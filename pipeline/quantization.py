"""The UNet's linear layers in 8 bits (``XSD_QUANTIZE``), through torchao.

``int8``: int8 weights per output channel and int8 activations per token, quantized as
they come (dynamic); runs on any device, the CPU included. ``fp8``: the same in float8
(e4m3), on the float8 tensor cores of CUDA GPUs of compute capability 8.9 or later (Ada,
Hopper); per-row scales when the UNet is bfloat16 (torchao's per-row kernel wants
bfloat16), one scale per tensor otherwise. Either pays off only compiled (``XSD_COMPILE``),
which fuses the quantization into the matmuls; eager, it costs more than it saves.

Only the UNet is quantized (where the time goes), only its linear layers (attention
projections and feed-forwards: most of its FLOPs at SDXL's sizes); convolutions, the text
encoders and the VAE keep their precision. torchao comes with the ``quantize`` extra.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Literal

import torch
from torch import nn

from .errors import ModelUnavailable

__all__ = ["FP8_CAPABILITY", "Quantization", "quantize_unet"]

log = logging.getLogger(__name__)

Quantization = Literal["none", "int8", "fp8"]
# The first CUDA compute capability with float8 tensor cores (Ada Lovelace).
FP8_CAPABILITY = (8, 9)


def quantize_unet(unet: nn.Module, mode: Quantization, device: torch.device) -> None:
    """Quantize ``unet``'s linear layers in place (it is already on ``device``); raises
    :class:`ModelUnavailable` where ``mode`` cannot run."""
    if mode == "none":
        return
    if mode == "fp8":
        _check_fp8(device)
    if importlib.util.find_spec("torchao") is None:
        raise ModelUnavailable(
            f"XSD_QUANTIZE={mode} needs torchao; install the `quantize` extra or set "
            "XSD_QUANTIZE=none."
        )
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int8DynamicActivationInt8WeightConfig,
        PerRow,
        PerTensor,
        quantize_,
    )

    if mode == "fp8":
        granularity = PerRow() if unet.dtype == torch.bfloat16 else PerTensor()
        config = Float8DynamicActivationFloat8WeightConfig(granularity=granularity)
    else:
        config = Int8DynamicActivationInt8WeightConfig()
    log.info("quantizing the UNet's linear layers: %s", mode)
    quantize_(unet, config)


def _check_fp8(device: torch.device) -> None:
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        if capability >= FP8_CAPABILITY:
            return
        found = f"{torch.cuda.get_device_name(device)} has {'.'.join(map(str, capability))}"
    else:
        found = f"this worker runs on {device.type}"
    raise ModelUnavailable(
        "XSD_QUANTIZE=fp8 needs a CUDA GPU of compute capability "
        f"{'.'.join(map(str, FP8_CAPABILITY))} or later (Ada, Hopper); {found}. "
        "Use int8 or none."
    )
