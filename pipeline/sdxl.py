"""A batched SDXL text-to-image loop over diffusers components.

Every sample of a batch carries its own prompt, seed and guidance scale, so different
requests of one resolution can share a forward pass. A sample's result does not depend on
its neighbours: its starting noise comes from its own generator, its embeddings are its
own (padding hidden by the attention mask), and classifier-free guidance is applied per
sample.

Samples may also carry reference images (IP-Adapter, with roles: :mod:`pipeline.roles`) and
a frame group (the frames of one sequential request share part of their self-attention:
:mod:`pipeline.consistency`). Both reach the UNet through attention processors installed
once at load time, which read a per-call state (:mod:`pipeline.attention`) that
:meth:`SDXLPipeline.predict_noise` sets from the batch's :class:`Conditioning`; rows without
references or group run the stock attention.

The call is split into steps that other stages reuse: :meth:`SDXLPipeline.encode` builds a
batch's :class:`Conditioning`, :meth:`SDXLPipeline.denoise` runs the loop over any latents
(whole images or tiles) and :meth:`SDXLPipeline.decode` turns latents into images.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .acceleration import Acceleration, prepare_unet
from .attention import FULL_VIEW, AttentionContext, CallState, FrameGroup, ReferenceTokens
from .components import Components
from .consistency import ConsistencyConfig, install_consistency
from .errors import InvalidInput, ModelUnavailable, PipelineError
from .geometry import Box, Offset, Size
from .ip_adapter import install_ip_adapter
from .references import ReferenceModels
from .roles import KINDS, REGION_BOXES, REGIONS, STYLE, ReferenceRole
from .seeds import derive_seed
from .text import PromptEncoder

__all__ = [
    "CancelCheck",
    "Conditioning",
    "NoisePredictor",
    "ReferenceInput",
    "Sample",
    "SDXLPipeline",
    "RowCheck",
    "StepCallback",
    "AdvanceCallback",
    "frame_groups",
    "resize_pixels",
    "rows_stopped",
    "size_ids",
    "step_callback",
]

# Called after each denoising step with (step index, seconds the step took).
StepCallback = Callable[[int, float], None]
# Called after each denoising step with the samples it advanced (per-request progress).
AdvanceCallback = Callable[[Sequence["Sample"]], None]
# Guided noise for (scaled latents, timestep, conditioning).
NoisePredictor = Callable[[torch.Tensor, torch.Tensor, "Conditioning"], torch.Tensor]
# Asked between denoising steps: True for a sample whose work is no longer wanted (its
# request was cancelled or taken over elsewhere).
CancelCheck = Callable[["Sample"], bool]
# The same question for every row of one denoising call, in row order.
RowCheck = Callable[[], Sequence[bool]]


@dataclass(frozen=True)
class ReferenceInput:
    """One reference image of a sample, and how it conditions the image."""

    image: Image.Image
    role: ReferenceRole = field(default_factory=ReferenceRole)
    weight: float | None = None  # None: the role's weight

    @property
    def scale(self) -> float:
        """The IP-Adapter scale of this reference."""
        return self.role.weight if self.weight is None else self.weight


@dataclass(frozen=True)
class Sample:
    """One image to generate."""

    prompt: str
    seed: int
    guidance_scale: float
    references: tuple[ReferenceInput, ...] = ()
    # Samples of one batch with the same group are frames of one sequential request.
    group: int | None = None


@dataclass
class Conditioning:
    """Everything the UNet is conditioned on for one batch; unconditional rows first, then
    conditional rows (classifier-free guidance runs both halves in one forward pass)."""

    states: torch.Tensor  # [2B, tokens, D]
    pooled: torch.Tensor  # [2B, P]
    mask: torch.Tensor | None  # [2B, tokens]
    time_ids: torch.Tensor  # [2B, 6]
    guidance: torch.Tensor  # [B, 1, 1, 1]
    references: ReferenceTokens | None = None  # None: no sample has references
    frame_groups: tuple[FrameGroup, ...] = ()  # groups of two frames or more
    # The part of the whole image the latents cover: reference regions ("on the left") are
    # placed in whole-image coordinates.
    view: Box = FULL_VIEW

    def with_size(self, *, original: Size, crop: Offset, target: Size) -> Conditioning:
        """The same conditioning with other SDXL size ids: tiles of a large image are crops
        of it, a ``target``-sized tile at ``crop`` of an ``original`` image. Reference
        regions ("on the left") follow the tile's place in the image."""
        ids = size_ids(original=original, crop=crop, target=target)
        time_ids = torch.tensor([ids], device=self.time_ids.device, dtype=self.time_ids.dtype)
        view = Box(
            top=crop.top / original.height,
            left=crop.left / original.width,
            bottom=min(1.0, (crop.top + target.height) / original.height),
            right=min(1.0, (crop.left + target.width) / original.width),
        )
        return replace(self, time_ids=time_ids.repeat(self.time_ids.shape[0], 1), view=view)

    def select(self, rows: Sequence[int]) -> Conditioning:
        """The conditioning of the samples at ``rows`` only (both guidance halves), for a
        batch that some samples have left. Frame groups keep their members' new positions;
        a group is whole or gone, since a request leaves with all its frames."""
        batch = self.guidance.shape[0]
        index = torch.tensor(
            [*rows, *(batch + row for row in rows)], dtype=torch.long, device=self.states.device
        )

        def pick(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.index_select(0, index.to(tensor.device))

        references = self.references
        if references is not None:
            references = ReferenceTokens(
                tokens=pick(references.tokens),
                scales=pick(references.scales),
                style=pick(references.style),
                regions=pick(references.regions),
                background=pick(references.background),
            )
        position = {old: new for new, old in enumerate(rows)}
        groups = tuple(
            FrameGroup(samples=tuple(position[row] for row in group.samples), seed=group.seed)
            for group in self.frame_groups
            if all(row in position for row in group.samples)
        )
        return replace(
            self,
            states=pick(self.states),
            pooled=pick(self.pooled),
            mask=None if self.mask is None else pick(self.mask),
            time_ids=pick(self.time_ids),
            guidance=self.guidance[list(rows)],
            references=references,
            frame_groups=groups,
        )


class SDXLPipeline:
    """Batched text-to-image over one set of components on one device."""

    def __init__(
        self,
        components: Components,
        *,
        device: torch.device,
        dtype: torch.dtype,
        consistency: ConsistencyConfig | None = None,
        acceleration: Acceleration | None = None,
    ):
        self.acceleration = acceleration or Acceleration()
        self.components = components.to(device, dtype, self.acceleration.vae_torch_dtype())
        self.device, self.dtype = device, dtype
        self.encoder = PromptEncoder(self.components, device=device)
        unet = self.components.unet
        # Each UNet call starts a new CUDA graph run, whose outputs may overwrite the last
        # run's: a call's output is consumed before the next call.
        self._graph_runs = self.acceleration.compile == "static" and device.type == "cuda"
        # The kernel first: the reference and frame processors wrap the one they find.
        prepare_unet(unet, self.acceleration, device)
        # Reference and frame attention: installed once, steered per call by the context.
        self.attention = AttentionContext()
        if self.components.references is not None:
            install_ip_adapter(unet, self.attention, self.components.references.layers)
        install_consistency(unet, self.attention, consistency or ConsistencyConfig())
        vae = self.components.vae
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        # The UNet halves the latent once per down block but the last.
        self.latent_multiple = 2 ** (len(self.components.unet.config.block_out_channels) - 1)

    @property
    def pixel_multiple(self) -> int:
        """Image sides must be multiples of this."""
        return self.vae_scale * self.latent_multiple

    def check_inputs(self, samples: Sequence[Sample], width: int, height: int, steps: int) -> None:
        """Fail before any work, naming the argument and its value."""
        if not samples:
            raise InvalidInput("samples must not be empty.")
        multiple = self.pixel_multiple
        if width % multiple or height % multiple or width <= 0 or height <= 0:
            raise InvalidInput(
                f"width and height must be multiples of {multiple}; got {width}x{height}."
            )
        if steps < 1:
            raise InvalidInput(f"steps must be at least 1; got {steps}.")
        for sample in samples:
            if not 1 <= sample.guidance_scale <= 20:
                raise InvalidInput(
                    f"guidance_scale must be in [1, 20]; got {sample.guidance_scale}."
                )
            if not sample.prompt.strip():
                raise InvalidInput("prompt must not be empty.")
            for reference in sample.references:
                self._check_reference(reference)

    def _check_reference(self, reference: ReferenceInput) -> None:
        self._reference_models()
        if not (math.isfinite(reference.scale) and reference.scale >= 0):
            raise InvalidInput(f"reference weight must be >= 0; got {reference.scale}.")
        role = reference.role
        if role.kind not in KINDS or (role.region is not None and role.region not in REGIONS):
            raise InvalidInput(f"reference role must use {KINDS} and {REGIONS}; got {role}.")

    def encode(self, samples: Sequence[Sample], *, width: int, height: int) -> Conditioning:
        """Prompt embeddings (SDXL's negative for an empty negative prompt is all zeros),
        size ids and per-sample guidance."""
        cond = self.encoder.encode([s.prompt for s in samples])
        uncond = cond.zeros_like()
        size = Size(width=width, height=height)
        ids = size_ids(original=size, crop=Offset(left=0, top=0), target=size)
        time_ids = torch.tensor([ids], device=self.device)
        return Conditioning(
            states=torch.cat([uncond.states, cond.states]).to(self.dtype),
            pooled=torch.cat([uncond.pooled, cond.pooled]).to(self.dtype),
            mask=None if cond.mask is None else torch.cat([uncond.mask, cond.mask]),
            time_ids=time_ids.to(self.dtype).repeat(2 * len(samples), 1),
            guidance=torch.tensor(
                [s.guidance_scale for s in samples], device=self.device, dtype=self.dtype
            ).view(-1, 1, 1, 1),
            references=self.encode_references(samples),
            frame_groups=frame_groups(samples),
        )

    def encode_references(self, samples: Sequence[Sample]) -> ReferenceTokens | None:
        """Each sample's reference tokens and their weights, roles and regions, padded to
        the sample with the most references (padding weighs 0); None when no sample has
        references. An image shared by several samples (the frames of a sequential
        request) is encoded once."""
        if not any(sample.references for sample in samples):
            return None
        images = {id(ref.image): ref.image for sample in samples for ref in sample.references}
        cond, uncond = self._reference_models().encode(list(images.values()))
        slot = {key: index for index, key in enumerate(images)}
        batch, width = len(samples), max(len(sample.references) for sample in samples)
        tokens = cond.new_zeros(2 * batch, width, *cond.shape[1:])
        scales = torch.zeros(2 * batch, width)
        style = torch.zeros(2 * batch, width, dtype=torch.bool)
        regions = torch.tensor(FULL_VIEW).repeat(2 * batch, width, 1)
        background = torch.zeros(2 * batch, width, dtype=torch.bool)
        for row, sample in enumerate(samples):
            for column, reference in enumerate(sample.references):
                encoded = slot[id(reference.image)]
                tokens[row, column] = uncond[encoded]
                tokens[batch + row, column] = cond[encoded]
                region = reference.role.region
                for index in (row, batch + row):  # the unconditional row, the conditional row
                    scales[index, column] = reference.scale
                    style[index, column] = reference.role.kind == STYLE
                    regions[index, column] = torch.tensor(REGION_BOXES.get(region, FULL_VIEW))
                    background[index, column] = region == "background"
        return ReferenceTokens(
            tokens=tokens.to(self.dtype),
            scales=scales.to(self.device),
            style=style.to(self.device),
            regions=regions.to(self.device),
            background=background.to(self.device),
        )

    def _reference_models(self) -> ReferenceModels:
        if self.components.references is None:
            raise ModelUnavailable(
                "This model has no IP-Adapter, so it cannot use reference images; install "
                "one under <weights>/ip_adapter (see pipeline/references.py)."
            )
        return self.components.references

    def noise(
        self, samples: Sequence[Sample], *, width: int, height: int, stream: int = 0
    ) -> torch.Tensor:
        """Each sample's noise for ``width x height`` latents, drawn on the CPU from its own
        generator: the same seed gives the same noise on every device and in every batch.
        Stream 0 (the starting noise) is seeded with the sample's seed; other streams
        with seeds derived from it, independent of the starting noise."""
        shape = (4, height // self.vae_scale, width // self.vae_scale)
        noise = [
            torch.randn(
                shape, generator=torch.Generator("cpu").manual_seed(derive_seed(s.seed, stream))
            )
            for s in samples
        ]
        return torch.stack(noise).to(self.device, self.dtype)

    def predict_noise(
        self, latents: torch.Tensor, timestep: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        """One guided UNet evaluation for a batch of (already scaled) latents."""
        if self._graph_runs:
            torch.compiler.cudagraph_mark_step_begin()
        with self._attention_state(cond, latents, timestep):
            noise = self.components.unet(
                torch.cat([latents, latents]),
                timestep,
                encoder_hidden_states=cond.states,
                encoder_attention_mask=cond.mask,
                added_cond_kwargs={"text_embeds": cond.pooled, "time_ids": cond.time_ids},
            ).sample
        noise_uncond, noise_cond = noise.chunk(2)
        return noise_uncond + cond.guidance * (noise_cond - noise_uncond)

    @contextmanager
    def _attention_state(
        self, cond: Conditioning, latents: torch.Tensor, timestep: torch.Tensor
    ) -> Iterator[None]:
        """The per-call state of the reference and frame processors, when the batch needs
        one; afterwards, a check that they ran (something that replaces the UNet's attention
        processors, an xformers switch for example, would otherwise drop references and
        frame consistency without a sound)."""
        if cond.references is None and not cond.frame_groups:
            yield
            return
        state = CallState(
            references=cond.references,
            frame_groups=cond.frame_groups,
            view=cond.view,
            latent_size=Size(width=latents.shape[-1], height=latents.shape[-2]),
            timestep=float(timestep),
        )
        with self.attention.active(state):
            yield
        if (cond.references is not None and not state.reference_calls) or (
            cond.frame_groups and not state.frame_calls
        ):
            raise PipelineError(
                "The UNet's reference or frame attention processors are not installed; "
                "re-create the pipeline after changing its attention processors."
            )

    def denoise(
        self,
        latents: torch.Tensor,
        cond: Conditioning,
        timesteps: torch.Tensor,
        *,
        on_step: StepCallback | None = None,
        predict: NoisePredictor | None = None,
        stopped: RowCheck | None = None,
    ) -> torch.Tensor:
        """Run the scheduler over ``timesteps`` (set on ``self.components.scheduler``),
        predicting noise with ``predict`` (blended tiles, say) or one UNet call.

        Before each step ``stopped`` says which rows are no longer wanted: they leave the
        batch (the others run on, each as it would alone) and keep their last latents. When
        no row is left the loop ends early."""
        scheduler = self.components.scheduler
        predict = predict or self.predict_noise
        live = list(range(latents.shape[0]))
        live_cond = cond
        for index, timestep in enumerate(timesteps):
            started = time.perf_counter()
            if stopped is not None:
                flags = stopped()
                kept = [row for row in live if not flags[row]]
                if not kept:
                    break
                if kept != live:
                    live, live_cond = kept, cond.select(kept)
                    latents = latents.clone()  # the rows that left keep their latents
            whole = len(live) == latents.shape[0]
            rows = latents if whole else latents[live]
            model_input = scheduler.scale_model_input(rows, timestep)
            noise = predict(model_input, timestep, live_cond)
            stepped = scheduler.step(noise, timestep, rows).prev_sample
            if whole:
                latents = stepped
            else:
                latents[live] = stepped
            if on_step is not None:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                on_step(index, time.perf_counter() - started)
        return latents

    def decode(
        self, latents: torch.Tensor, *, sizes: Sequence[Size] | None = None
    ) -> list[Image.Image]:
        """Latents to images, one sample at a time (VAE activations at full resolution are
        the largest tensors of the whole call), each resized to its ``sizes`` entry before
        its pixels are rounded to bytes: rounded first, a pixel's last-bit difference
        between batch sizes could flip a byte that the resize then spreads and amplifies."""
        images = []
        for index, sample_latents in enumerate(latents):
            pixels = self.decode_pixels(sample_latents)
            if sizes is not None:
                pixels = resize_pixels(pixels, sizes[index])
            pixels = ((pixels + 1) * 127.5).round().byte()
            array = np.ascontiguousarray(pixels.permute(1, 2, 0).cpu().numpy())
            images.append(Image.fromarray(array))
        return images

    def decode_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """One sample's latents ``[4, h, w]`` to float32 pixels ``[3, H, W]`` in [-1, 1]."""
        vae = self.components.vae
        scaled = latents[None].to(vae.dtype) / vae.config.scaling_factor
        return vae.decode(scaled).sample[0].float().clamp(-1, 1)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Float pixels ``[3, H, W]`` in [-1, 1] to one sample's (scaled) latents."""
        vae = self.components.vae
        moments = vae.encode(pixels[None].to(vae.dtype)).latent_dist
        return (moments.mode()[0] * vae.config.scaling_factor).to(self.dtype)

    @torch.inference_mode()
    def latents(
        self,
        samples: Sequence[Sample],
        *,
        width: int,
        height: int,
        steps: int,
        on_step: StepCallback | None = None,
        cancelled: CancelCheck | None = None,
        on_advance: AdvanceCallback | None = None,
    ) -> torch.Tensor:
        """Denoised latents, one per sample, for ``width x height`` images; a sample that
        ``cancelled`` stops leaves the batch and its latents are not finished."""
        # 1. Check inputs.
        self.check_inputs(samples, width, height, steps)
        # 2. Conditioning: prompts, size ids, guidance, references, frame groups.
        cond = self.encode(samples, width=width, height=height)
        # 3. Timesteps and starting noise.
        scheduler = self.components.scheduler
        scheduler.set_timesteps(steps, device=self.device)
        latents = self.noise(samples, width=width, height=height) * scheduler.init_noise_sigma
        # 4. Denoising loop.
        return self.denoise(
            latents,
            cond,
            scheduler.timesteps,
            on_step=step_callback(on_step, on_advance, samples),
            stopped=rows_stopped(samples, cancelled),
        )

    @torch.inference_mode()
    def __call__(
        self,
        samples: Sequence[Sample],
        *,
        width: int,
        height: int,
        steps: int,
        on_step: StepCallback | None = None,
    ) -> list[Image.Image]:
        """Generate one image per sample at ``width x height``."""
        latents = self.latents(samples, width=width, height=height, steps=steps, on_step=on_step)
        return self.decode(latents)


def step_callback(
    on_step: StepCallback | None, on_advance: AdvanceCallback | None, samples: Sequence[Sample]
) -> StepCallback | None:
    """One step callback for a denoising call over ``samples``: ``on_step``, then
    ``on_advance`` with those samples (rows that left the call keep being named: their
    requests are no longer anyone's to report)."""
    if on_advance is None:
        return on_step

    def step(index: int, seconds: float) -> None:
        if on_step is not None:
            on_step(index, seconds)
        on_advance(samples)

    return step


def resize_pixels(pixels: torch.Tensor, size: Size) -> torch.Tensor:
    """Float pixels ``[3, H, W]`` in [-1, 1] resized to ``size``: bicubic, antialiased
    when shrinking."""
    if Size(width=pixels.shape[-1], height=pixels.shape[-2]) == size:
        return pixels
    shape = (size.height, size.width)
    resized = F.interpolate(pixels[None], size=shape, mode="bicubic", antialias=True)[0]
    return resized.clamp(-1, 1)


def size_ids(*, original: Size, crop: Offset, target: Size) -> list[int]:
    """SDXL's six size conditioning ids: the original image's size, the crop's top-left
    corner in it and the target size, each pair height (or top) first."""
    return [original.height, original.width, crop.top, crop.left, target.height, target.width]


def rows_stopped(samples: Sequence[Sample], cancelled: CancelCheck | None) -> RowCheck | None:
    """The row check of a denoising call over ``samples`` (None when nothing can stop)."""
    if cancelled is None:
        return None
    return lambda: [cancelled(sample) for sample in samples]


def frame_groups(samples: Sequence[Sample]) -> tuple[FrameGroup, ...]:
    """The groups of two or more samples that are frames of one sequential request; a
    group's seed is its first frame's (the request's seed)."""
    members: dict[int, list[int]] = {}
    for index, sample in enumerate(samples):
        if sample.group is not None:
            members.setdefault(sample.group, []).append(index)
    return tuple(
        FrameGroup(samples=tuple(rows), seed=samples[rows[0]].seed)
        for rows in members.values()
        if len(rows) > 1
    )
