"""2K and 4K: the bucket image upscaled, then refined at the output resolution.

SDXL composes well at about one megapixel; asked for 4096x4096 directly it repeats its
subject and loses the composition, and a plain resize of the bucket image is soft. So an
image is composed at its bucket, then refined (SDXL's "hires fix"): decoded, upscaled
(bicubic) to the working size, encoded by the VAE again, noised to :data:`STRENGTH` of the
schedule and denoised through the rest of it, which redraws the detail a resize cannot.
The pixels stay float between the stages: rounding the bucket image to bytes would turn
the last-bit float differences between batch sizes into whole steps of 1/255, which the
refinement then amplifies.

Up to :data:`WHOLE_AREA` times the bucket's area the whole latent goes through the UNet
at once, in chunks of samples whose pixels stay within those of the bucket pass. Beyond it
(4K), the latent is covered by overlapping bucket-sized tiles, each evaluated at every step
with SDXL's crop coordinates telling it where it sits in the image, and the predictions are
blended with weights that fall off towards tile edges before the scheduler step
(MultiDiffusion, Bar-Tal et al. 2023): memory is that of a bucket pass whatever the output
size, and no seams show because every step averages the overlaps. The refiner's VAE
encodes and decodes run one image at a time, in tiles (diffusers' tiling); tiling is
switched on only around them, since the VAE is the base pass's too, whose bucket images
must decode exactly as diffusers' pipeline decodes them.

Models smaller than SDXL (``tiny``) work at the output size scaled by their base
resolution over SDXL's: the same arithmetic on proportionally smaller images, resized to
the exact output size at the end like every image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL
from PIL import Image

from .geometry import Offset, Size
from .sdxl import (
    AdvanceCallback,
    CancelCheck,
    Conditioning,
    NoisePredictor,
    Sample,
    SDXLPipeline,
    StepCallback,
    resize_pixels,
    rows_stopped,
    step_callback,
)

__all__ = [
    "STRENGTH",
    "WHOLE_AREA",
    "Refiner",
    "Tile",
    "TiledPredictor",
    "chunks",
    "refine_steps",
    "tile_grid",
    "vae_tiling",
]

# The part of the schedule the refinement redraws: enough for detail at the new scale,
# little enough that the bucket image's composition (and a series' subject) stays.
STRENGTH = 0.35
# Up to this many bucket areas, the latent is refined whole; beyond it, in tiles.
WHOLE_AREA = 4.0
# Output areas up to this many bucket areas are only resized: too little to gain detail.
MIN_AREA = 1.25
# The noise stream of a sample's refinement noise (0 is its starting noise).
_NOISE_STREAM = 1 << 20
# SDXL's base resolution: other models' working sizes scale by theirs over this.
_SDXL_BASE = 1024


def refine_steps(steps: int) -> int:
    """The steps a refinement runs for a schedule of ``steps``: its last :data:`STRENGTH`."""
    return max(1, round(steps * STRENGTH))


@dataclass(frozen=True)
class Tile:
    """A window of the latent, in latent pixels."""

    top: int
    left: int
    height: int
    width: int

    @property
    def window(self) -> tuple[slice, slice]:
        """Index for the last two dimensions of a latent tensor."""
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


def tile_grid(height: int, width: int, *, tile: int, overlap: int) -> list[Tile]:
    """Tiles of at most ``tile`` covering a ``height x width`` latent, overlapping by at
    least ``overlap``, spread evenly so that none hangs over the edge."""

    def starts(length: int) -> list[tuple[int, int]]:
        size = min(tile, length)
        if size == length:
            return [(0, size)]
        count = math.ceil((length - overlap) / (size - overlap))
        return [(round(i * (length - size) / (count - 1)), size) for i in range(count)]

    return [
        Tile(top, left, tile_height, tile_width)
        for top, tile_height in starts(height)
        for left, tile_width in starts(width)
    ]


def _ramp(length: int, overlap: int) -> torch.Tensor:
    # 1 in the middle, falling linearly to 1/(overlap + 1) at both ends; never 0, so an
    # image edge covered by a single tile still divides by a positive total.
    index = torch.arange(length, dtype=torch.float32)
    return torch.minimum((index + 1) / (overlap + 1), (length - index) / (overlap + 1)).clamp(
        max=1.0
    )


@contextmanager
def vae_tiling(vae: AutoencoderKL) -> Iterator[None]:
    """Diffusers' VAE tiling, on for the block and back as it was afterwards. It engages
    only above the VAE's own sample size, and tiles decode slightly differently from one
    whole pass, so it stays off for the bucket images."""
    was = vae.use_tiling
    vae.enable_tiling()
    try:
        yield
    finally:
        if not was:
            vae.disable_tiling()


class Refiner:
    """Upscales and refines a batch's bucket images to one working size."""

    def __init__(self, pipeline: SDXLPipeline, *, base_resolution: int) -> None:
        self.pipeline = pipeline
        self.base_resolution = base_resolution
        # Tiles are bucket-sized: the UNet's native scale, and a bucket pass's memory.
        self.tile = base_resolution // pipeline.vae_scale
        self.overlap = self.tile // 4

    def working_size(self, width: int, height: int) -> Size:
        """The pixels an output of ``width x height`` is refined at: the output itself for
        SDXL, scaled for smaller models, rounded to the pipeline's pixel multiple."""
        multiple = self.pipeline.pixel_multiple
        scale = self.base_resolution / _SDXL_BASE

        def fit(side: int) -> int:
            return max(multiple, round(side * scale / multiple) * multiple)

        return Size(width=fit(width), height=fit(height))

    def needed(self, bucket: Size, size: Size) -> bool:
        """Whether images generated at ``bucket`` gain from refinement at ``size``."""
        return size.area > MIN_AREA * bucket.area

    @torch.inference_mode()
    def __call__(
        self,
        samples: Sequence[Sample],
        latents: torch.Tensor,
        *,
        width: int,
        height: int,
        steps: int,
        outputs: Sequence[Size],
        on_step: StepCallback | None = None,
        cancelled: CancelCheck | None = None,
        on_advance: AdvanceCallback | None = None,
    ) -> list[Image.Image]:
        """The images of bucket ``latents`` (one per sample) refined at ``width x height``
        and resized to their ``outputs``. A sample that ``cancelled`` stops leaves the
        batch; its image is unfinished, for the caller to drop. ``on_advance`` hears which
        samples each step advanced (the chunks below run one after another)."""
        self.pipeline.check_inputs(samples, width, height, steps)
        bucket_area = self.base_resolution**2
        if width * height > WHOLE_AREA * bucket_area:
            return self._refine(
                samples,
                latents,
                width,
                height,
                steps,
                outputs,
                step_callback(on_step, on_advance, samples),
                cancelled,
                tiled=True,
            )
        # Whole latents: as many samples per call as fit the pixels of a bucket pass.
        rows = max(1, len(samples) * bucket_area // (width * height))
        refined: list[Image.Image] = []
        for start, stop in chunks(samples, rows):
            refined += self._refine(
                samples[start:stop],
                latents[start:stop],
                width,
                height,
                steps,
                outputs[start:stop],
                step_callback(on_step, on_advance, samples[start:stop]),
                cancelled,
                tiled=False,
            )
        return refined

    def _refine(
        self,
        samples: Sequence[Sample],
        base: torch.Tensor,
        width: int,
        height: int,
        steps: int,
        outputs: Sequence[Size],
        on_step: StepCallback | None,
        cancelled: CancelCheck | None,
        *,
        tiled: bool,
    ) -> list[Image.Image]:
        pipeline = self.pipeline
        # 1. Conditioning at the working size.
        cond = pipeline.encode(samples, width=width, height=height)
        # 2. The last STRENGTH of the schedule.
        scheduler = pipeline.components.scheduler
        scheduler.set_timesteps(steps, device=pipeline.device)
        start = steps - refine_steps(steps)
        timesteps = scheduler.timesteps[start:]
        scheduler.set_begin_index(start * scheduler.order)
        # 3. The upscaled images' latents, noised to the first of those timesteps.
        latents = self.upscale(base, width=width, height=height)
        noise = pipeline.noise(samples, width=width, height=height, stream=_NOISE_STREAM)
        latents = scheduler.add_noise(latents, noise, timesteps[:1].repeat(len(samples)))
        # 4. Denoise, whole or in blended tiles.
        predict = self.tiled_predictor(latents.shape, width, height) if tiled else None
        latents = pipeline.denoise(
            latents,
            cond,
            timesteps,
            on_step=on_step,
            predict=predict,
            stopped=rows_stopped(samples, cancelled),
        )
        # 5. Decode (tiled by the VAE where large) to the output sizes.
        with vae_tiling(pipeline.components.vae):
            return pipeline.decode(latents, sizes=outputs)

    def upscale(self, latents: torch.Tensor, *, width: int, height: int) -> torch.Tensor:
        """Bucket latents to the latents of their images upscaled to ``width x height``,
        one image at a time (the VAE's activations are the largest tensors here)."""
        upscaled = []
        with vae_tiling(self.pipeline.components.vae):
            for sample_latents in latents:
                pixels = self.pipeline.decode_pixels(sample_latents)
                pixels = resize_pixels(pixels, Size(width=width, height=height))
                upscaled.append(self.pipeline.encode_pixels(pixels))
        return torch.stack(upscaled)

    def tiled_predictor(self, shape: torch.Size, width: int, height: int) -> TiledPredictor:
        """The blended-tile predictor for latents of ``shape`` of a ``width x height``
        image."""
        tiles = tile_grid(shape[-2], shape[-1], tile=self.tile, overlap=self.overlap)
        return TiledPredictor(
            self.pipeline.predict_noise,
            tiles,
            self.overlap,
            image_size=Size(width=width, height=height),
            scale=self.pipeline.vae_scale,
            device=self.pipeline.device,
        )


class TiledPredictor:
    """Noise predictions for a large latent from overlapping tiles, blended."""

    def __init__(
        self,
        predict: NoisePredictor,
        tiles: Sequence[Tile],
        overlap: int,
        *,
        image_size: Size,
        scale: int,
        device: torch.device,
    ) -> None:
        self.predict = predict
        self.tiles = list(tiles)
        self.image_size, self.scale = image_size, scale
        ramps = [
            _ramp(tile.height, overlap)[:, None] * _ramp(tile.width, overlap)[None, :]
            for tile in tiles
        ]
        # Each tile's share of every latent pixel it covers: its ramp over the sum of all
        # ramps there, the same at every step.
        height = max(tile.top + tile.height for tile in tiles)
        width = max(tile.left + tile.width for tile in tiles)
        total = torch.zeros(height, width)
        for tile, ramp in zip(tiles, ramps, strict=True):
            total[tile.window] += ramp
        self.weights = [
            (ramp / total[tile.window]).to(device) for tile, ramp in zip(tiles, ramps, strict=True)
        ]

    def tile_cond(self, cond: Conditioning, tile: Tile) -> Conditioning:
        """The whole image's ``cond`` as seen by one tile: a crop of the image, with the
        SDXL size ids and reference regions of its place in it."""
        scale = self.scale
        return cond.with_size(
            original=self.image_size,
            crop=Offset(left=tile.left * scale, top=tile.top * scale),
            target=Size(width=tile.width * scale, height=tile.height * scale),
        )

    def __call__(
        self, latents: torch.Tensor, timestep: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        """The blended prediction (``cond`` is the whole image's, for the rows still in the
        batch; each tile derives its own from it)."""
        blended = torch.zeros(latents.shape, dtype=torch.float32, device=latents.device)
        for tile, weight in zip(self.tiles, self.weights, strict=True):
            window = (..., *tile.window)
            prediction = self.predict(latents[window], timestep, self.tile_cond(cond, tile))
            blended[window] += prediction.float() * weight
        return blended.to(latents.dtype)


def chunks(samples: Sequence[Sample], rows: int) -> list[tuple[int, int]]:
    """Consecutive (start, stop) runs of at most ``rows`` samples, never separating the
    frames of one sequential request (a series larger than ``rows`` runs alone)."""
    runs: list[tuple[int, int]] = []
    index = 0
    while index < len(samples):
        stop = index + 1
        group = samples[index].group
        while stop < len(samples) and group is not None and samples[stop].group == group:
            stop += 1
        # The unit [index, stop) joins the open run when it fits.
        if runs and stop - runs[-1][0] <= rows:
            runs[-1] = (runs[-1][0], stop)
        else:
            runs.append((index, stop))
        index = stop
    return runs
