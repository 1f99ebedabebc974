"""The physical limit: the FLOPs of one image of the full SDXL configuration, and the
images/s that a GPU's peak throughput allows.

``python -m benchmarks.flops [--steps 20] [--sizes 1024x1024,2048x2048,4096x4096]
[--tflops 790] [--json PATH]``

The modules are built with SDXL base 1.0's exact configuration on the ``meta`` device (no
weights, no memory), and PyTorch's ``FlopCounterMode`` counts every matrix multiplication,
convolution and attention of one call to each (2 FLOPs per multiply-add; norms,
activations and the scheduler's arithmetic are left out, under 1% here). The calls are
the ones this pipeline makes for one image:

- **text**: both CLIP encoders on the prompt (the negative is SDXL's zero embedding, so it
  costs nothing);
- **UNet**: ``steps`` evaluations at the bucket, each on two rows (classifier-free
  guidance runs both halves in one pass);
- **VAE decode** of the bucket image (for a 2K or 4K image, the decode that its
  refinement starts from);
- **refinement** (2K and 4K, :mod:`pipeline.refine`): the prompt encoded again, the
  upscaled image encoded (VAE tiled, as the refiner runs it), the last
  ``STRENGTH`` of the schedule at the output size (at 4K on the overlapping bucket-sized
  tiles of ``tile_grid``, every tile evaluated at every step), and the tiled decode.

The bound is ``peak FLOP/s / FLOPs per image``: what a GPU computing nothing else at its
peak would reach. It is printed for ``--tflops`` (the H200's measured ~790 TFLOP/s dense
bf16) and twice that (FP8), next to MLPerf Inference's SDXL results (1024x1024, 20 Euler
steps, guidance 8; NVIDIA's TensorRT FP8 submissions), the figures the pool is compared
against.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from pipeline.buckets import bucket_for
from pipeline.components import sdxl_text_configs, sdxl_unet_config, sdxl_vae_config
from pipeline.geometry import Size
from pipeline.refine import MIN_AREA, STRENGTH, WHOLE_AREA, tile_grid

__all__ = ["ImageFlops", "SdxlOnMeta", "image_flops", "main"]

H200_BF16_TFLOPS = 790.0
# MLPerf Inference, SDXL offline, images/s per GPU (NVIDIA, TensorRT, FP8).
MLPERF = {"H100 (v4.1)": 2.04, "H200 (v5.0)": 2.37}
_BASE = 1024  # SDXL's bucket resolution
_VAE_SCALE = 8  # pixels per latent pixel
_TEXT_TOKENS = 77
_MULTIPLE = 64  # pixels an SDXL size is a multiple of


def _count(call: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        call()
    return counter.get_total_flops()


class SdxlOnMeta:
    """SDXL base 1.0's modules on the meta device, and the FLOPs of one call of each."""

    def __init__(self) -> None:
        with torch.device("meta"):
            self._unet = UNet2DConditionModel(**sdxl_unet_config()).eval()
            self._vae = AutoencoderKL(**sdxl_vae_config()).eval()
            text, text_2 = sdxl_text_configs()
            self._text_encoders = (CLIPTextModel(text).eval(), CLIPTextModelWithProjection(text_2))
        # As the refiner runs it: tiles of the VAE's own sample size, beyond that size.
        self._vae.enable_tiling()
        self._unet_flops: dict[Size, int] = {}

    def text(self) -> int:
        """Both text encoders on one prompt."""
        ids = torch.zeros(1, _TEXT_TOKENS, dtype=torch.long, device="meta")
        return sum(_count(lambda e=encoder: e(ids)) for encoder in self._text_encoders)

    def unet(self, size: Size) -> int:
        """One UNet evaluation of one image at ``size`` (its two guidance rows)."""
        # Counted once per size: the tiles of a 4K image are mostly of one size.
        if size not in self._unet_flops:
            self._unet_flops[size] = self._count_unet(size)
        return self._unet_flops[size]

    def _count_unet(self, size: Size) -> int:
        with torch.device("meta"):
            latents = torch.empty(2, 4, size.height // _VAE_SCALE, size.width // _VAE_SCALE)
            states = torch.empty(2, _TEXT_TOKENS, 2048)
            added = {"text_embeds": torch.empty(2, 1280), "time_ids": torch.empty(2, 6)}
            timesteps = torch.empty(2)
        return _count(
            lambda: self._unet(
                latents, timesteps, encoder_hidden_states=states, added_cond_kwargs=added
            )
        )

    def decode(self, size: Size) -> int:
        """The VAE decode of one image of ``size``."""
        latents = torch.empty(
            1, 4, size.height // _VAE_SCALE, size.width // _VAE_SCALE, device="meta"
        )
        return _count(lambda: self._vae.decode(latents))

    def encode(self, size: Size) -> int:
        """The VAE encode of one image of ``size``."""
        pixels = torch.empty(1, 3, size.height, size.width, device="meta")
        return _count(lambda: self._vae.encode(pixels))


@dataclass(frozen=True)
class ImageFlops:
    """The FLOPs of one image, by part."""

    size: str
    bucket: str
    text: int
    unet: int
    unet_evaluations: int
    vae: int
    refine_unet: int
    refine_unet_evaluations: int
    refine_vae: int

    @property
    def total(self) -> int:
        """Every counted FLOP of the image."""
        return self.text + self.unet + self.vae + self.refine_unet + self.refine_vae

    def images_per_second(self, tflops: float) -> float:
        """The bound at ``tflops`` TFLOP/s of sustained compute."""
        return tflops * 1e12 / self.total


def image_flops(model: SdxlOnMeta, size: Size, *, steps: int) -> ImageFlops:
    """The FLOPs of one image of ``size``, made the way :mod:`pipeline` makes it."""
    bucket = bucket_for(size.width, size.height, base=_BASE, multiple=_MULTIPLE)
    refine_steps = max(1, round(steps * STRENGTH))
    text = model.text()
    refine_unet = refine_evaluations = refine_vae = 0
    if size.area > MIN_AREA * bucket.area:
        # Whole latents up to WHOLE_AREA bucket areas, else bucket-sized tiles at every step.
        if size.area > WHOLE_AREA * bucket.area:
            tile = _BASE // _VAE_SCALE
            tiles = tile_grid(
                size.height // _VAE_SCALE, size.width // _VAE_SCALE, tile=tile, overlap=tile // 4
            )
            per_step = sum(
                model.unet(Size(width=t.width * _VAE_SCALE, height=t.height * _VAE_SCALE))
                for t in tiles
            )
            refine_evaluations = refine_steps * len(tiles)
        else:
            per_step = model.unet(size)
            refine_evaluations = refine_steps
        refine_unet = refine_steps * per_step
        text *= 2  # the refiner conditions on the prompt again, at the working size
        # The bucket image decoded and encoded again once upscaled, then the final decode.
        refine_vae = model.encode(size) + model.decode(size)
    return ImageFlops(
        size=f"{size.width}x{size.height}",
        bucket=f"{bucket.width}x{bucket.height}",
        text=text,
        unet=steps * model.unet(bucket),
        unet_evaluations=steps,
        vae=model.decode(bucket),
        refine_unet=refine_unet,
        refine_unet_evaluations=refine_evaluations,
        refine_vae=refine_vae,
    )


def _size(text: str) -> Size:
    width, _, height = text.lower().partition("x")
    return Size(width=int(width), height=int(height))


def _tera(flops: int) -> str:
    return f"{flops / 1e12:.1f}"


def report(figures: list[ImageFlops], *, tflops: float, steps: int) -> str:
    """The Markdown table of the figures and bounds."""
    fp8 = 2 * tflops
    lines = [
        f"SDXL base 1.0, {steps} steps, classifier-free guidance; TFLOP per image "
        f"(UNet evaluations in brackets). Bounds at {tflops:.0f} TFLOP/s (bf16) and "
        f"{fp8:.0f} TFLOP/s (FP8).",
        "",
        "| size (bucket) | text | UNet | VAE | refine UNet | refine VAE | total "
        "| bound bf16 img/s | bound FP8 img/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for f in figures:
        lines.append(
            f"| {f.size} ({f.bucket}) | {f.text / 1e12:.2f} | {_tera(f.unet)} "
            f"({f.unet_evaluations}) | {_tera(f.vae)} | {_tera(f.refine_unet)} "
            f"({f.refine_unet_evaluations}) | {_tera(f.refine_vae)} | {_tera(f.total)} "
            f"| {f.images_per_second(tflops):.2f} | {f.images_per_second(fp8):.2f} |"
        )
    first = figures[0]
    lines.append("")
    for name, rate in MLPERF.items():
        lines.append(
            f"MLPerf {name}: {rate} img/s at 1024x1024 = {rate / first.images_per_second(fp8):.0%}"
            f" of the FP8 bound and {rate / first.images_per_second(tflops):.0%} of the bf16 "
            f"bound for {first.size}, at {rate * first.total / 1e12:.0f} TFLOP/s sustained."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Count, print the table, and optionally write JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flops", description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sizes", default="1024x1024,2048x2048,4096x4096")
    parser.add_argument("--tflops", type=float, default=H200_BF16_TFLOPS)
    parser.add_argument("--json", type=Path, default=None, help="Write the figures here.")
    args = parser.parse_args(argv)
    model = SdxlOnMeta()
    figures = [image_flops(model, _size(text), steps=args.steps) for text in args.sizes.split(",")]
    print(report(figures, tflops=args.tflops, steps=args.steps))
    if args.json:
        rows = [
            {
                **asdict(f),
                "total": f.total,
                "bound_bf16": f.images_per_second(args.tflops),
                "bound_fp8": f.images_per_second(2 * args.tflops),
            }
            for f in figures
        ]
        args.json.write_text(json.dumps({"tflops": args.tflops, "figures": rows}, indent=2))


if __name__ == "__main__":
    main()
