"""How the pipeline runs on its device: precision, attention kernel, compilation, layout.

On CUDA the UNet and text encoders run in float16 (or bfloat16, same speed on Ampere and
later, with float32's range), attention through PyTorch's scaled-dot-product kernels
(flash or memory-efficient, chosen by PyTorch) or xformers when installed and asked for,
convolutions in channels_last, float32 matmuls (the VAE) on TF32 tensor cores. On the CPU
everything is float32 and stock. The VAE stays float32 unless ``XSD_VAE_DTYPE`` says
otherwise (SDXL's VAE overflows in float16; bfloat16 has float32's range) and tiles large
images (:mod:`pipeline.refine` turns tiling on).

The fast path, every part off by default until measured (``benchmarks.fastpath``):

- ``XSD_QUANTIZE``: the UNet's linear layers in int8 or float8 (:mod:`pipeline.quantization`).
- ``XSD_COMPILE``: ``torch.compile`` on the UNet, on any device. ``dynamic`` compiles one
  graph for every batch size and resolution; ``static`` one graph per shape (a bucket and
  a batch size, tiles included), with CUDA graphs on CUDA (mode ``reduce-overhead``), so
  each step is one graph launch. A new shape compiles on first use, so GPU workers compile
  the shapes they expect at start (``XSD_WARMUP_SIZES``) before they take work.

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
from .quantization import Quantization, quantize_unet
from .registry import DType

__all__ = ["Acceleration", "CompileMode", "VaeDType", "prepare_unet"]

log = logging.getLogger(__name__)

Kernel = Literal["sdpa", "xformers"]
CompileMode = Literal["off", "dynamic", "static"]
# The VAE's precision: float16 only with a VAE fixed for it (SDXL's own overflows).
VaeDType = Literal["float32", "bfloat16", "float16"]
# Shapes a static UNet compiles for before falling back to eager: buckets x batch sizes,
# plus the refiner's tile batches, exceed torch's default of 8.
STATIC_SHAPES = 64


@dataclass(frozen=True)
class Acceleration:
    """Device options (``XSD_DTYPE``, ``XSD_ATTENTION``, ``XSD_COMPILE``,
    ``XSD_CHANNELS_LAST``, ``XSD_QUANTIZE``, ``XSD_VAE_DTYPE``)."""

    dtype: DType = "auto"
    attention: Kernel = "sdpa"
    compile: CompileMode = "off"
    channels_last: bool = True
    quantize: Quantization = "none"
    vae_dtype: VaeDType = "float32"

    def torch_dtype(self, device: torch.device, model: DType = "auto") -> torch.dtype:
        """The UNet's and text encoders' dtype: ``XSD_DTYPE`` when set, else ``model``'s
        (the alias's, from the registry); ``auto`` is float16 on CUDA, else float32."""
        chosen = model if self.dtype == "auto" else self.dtype
        if chosen == "auto":
            return torch.float16 if device.type == "cuda" else torch.float32
        return getattr(torch, chosen)

    def vae_torch_dtype(self) -> torch.dtype:
        """The VAE's dtype (``XSD_VAE_DTYPE``)."""
        return getattr(torch, self.vae_dtype)


def prepare_unet(unet: UNet2DConditionModel, options: Acceleration, device: torch.device) -> None:
    """Set the UNet's attention kernel and memory layout, quantize it and compile it if
    asked, before the pipeline's own processors wrap the kernel's."""
    if options.attention == "xformers":
        if importlib.util.find_spec("xformers") is None:
            raise ModelUnavailable(
                "XSD_ATTENTION=xformers but xformers is not installed; install the "
                "`xformers` extra (built for this torch and CUDA) or use sdpa."
            )
        if device.type != "cuda":
            raise ModelUnavailable("XSD_ATTENTION=xformers needs a CUDA device.")
        unet.enable_xformers_memory_efficient_attention()
    if device.type == "cuda":
        # TF32 for the float32 matmuls and convolutions left (the VAE): ~10 bits of
        # mantissa, invisible in 8-bit pixels, several times faster on tensor cores.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        if options.channels_last:
            unet.to(memory_format=torch.channels_last)
    quantize_unet(unet, options.quantize, device)
    _compile(unet, options.compile, device)


def _compile(unet: UNet2DConditionModel, mode: CompileMode, device: torch.device) -> None:
    # Compiled in place, so the module keeps its type, config and processors.
    if mode == "dynamic":
        # Batch sizes vary; dynamic shapes avoid a recompilation for each new one.
        log.info("compiling the UNet with torch.compile, dynamic shapes")
        unet.compile(dynamic=True)
    elif mode == "static":
        log.info("compiling the UNet with torch.compile, one graph per shape")
        torch._dynamo.config.recompile_limit = max(
            torch._dynamo.config.recompile_limit, STATIC_SHAPES
        )
        unet.compile(dynamic=False, mode="reduce-overhead" if device.type == "cuda" else None)
