"""How the pipeline runs on its device: precision, attention kernel, compilation, layout.

On CUDA the UNet and text encoders run in float16 (or bfloat16, same speed on Ampere and
later, with float32's range), attention through PyTorch's scaled-dot-product kernels
(flash or memory-efficient, chosen by PyTorch) or xformers when installed and asked for,
convolutions in channels_last, float32 matmuls (the VAE) on TF32 tensor cores, and the
UNet optionally compiled with ``torch.compile``. On the CPU everything is float32 and
stock. The VAE always stays float32 (SDXL's VAE overflows in float16) and tiles large
images (:mod:`pipeline.refine` turns tiling on).

The reference and frame attention processors (:mod:`pipeline.ip_adapter`,
:mod:`pipeline.consistency`) wrap whatever processor they find, so the kernel is chosen
first (:func:`prepare_unet`) and they are installed on top: rows without references or
frames then run on xformers too, and switching kernels never drops them. The rows with
references or frames run PyTorch's SDPA whatever the setting (:mod:`pipeline.attention`):
their attention is not one the wrapped processor can compute, and SDPA is the kernel of
diffusers' own IP-Adapter processor, which the reference images must match to the bit.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import UNet2DConditionModel

from .errors import ModelUnavailable
from .registry import DType

__all__ = ["Acceleration", "prepare_unet"]

log = logging.getLogger(__name__)

Kernel = Literal["sdpa", "xformers"]


@dataclass(frozen=True)
class Acceleration:
    """Device options (``XSD_DTYPE``, ``XSD_ATTENTION``, ``XSD_COMPILE``,
    ``XSD_CHANNELS_LAST``)."""

    dtype: DType = "auto"
    attention: Kernel = "sdpa"
    compile: bool = False
    channels_last: bool = True

    def torch_dtype(self, device: torch.device, model: DType = "auto") -> torch.dtype:
        """The UNet's and text encoders' dtype: ``XSD_DTYPE`` when set, else ``model``'s
        (the alias's, from the registry); ``auto`` is float16 on CUDA, else float32."""
        chosen = model if self.dtype == "auto" else self.dtype
        if chosen == "auto":
            return torch.float16 if device.type == "cuda" else torch.float32
        return getattr(torch, chosen)


def prepare_unet(unet: UNet2DConditionModel, options: Acceleration, device: torch.device) -> None:
    """Set the UNet's attention kernel and memory layout, and compile it if asked, before
    the pipeline's own processors wrap the kernel's."""
    if options.attention == "xformers":
        if importlib.util.find_spec("xformers") is None:
            raise ModelUnavailable(
                "XSD_ATTENTION=xformers but xformers is not installed; install the "
                "`xformers` extra (built for this torch and CUDA) or use sdpa."
            )
        if device.type != "cuda":
            raise ModelUnavailable("XSD_ATTENTION=xformers needs a CUDA device.")
        unet.enable_xformers_memory_efficient_attention()
    if device.type != "cuda":
        return  # CPU: stock float32, nothing below pays off
    # TF32 for the float32 matmuls and convolutions left (the VAE): ~10 bits of mantissa,
    # invisible in 8-bit pixels, several times faster on tensor cores.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if options.channels_last:
        unet.to(memory_format=torch.channels_last)
    if options.compile:
        # Compiled in place, so the module keeps its type, config and processors. Batch
        # sizes vary; dynamic shapes avoid a recompilation for each new one.
        log.info("compiling the UNet with torch.compile (the first batches are slow)")
        unet.compile(dynamic=True)
