"""A batched SDXL text-to-image loop over diffusers components.

Every sample of a batch carries its own prompt, seed and guidance scale, so different
requests of one resolution can share a forward pass. A sample's result does not depend on
its neighbours: its starting noise comes from its own generator, its embeddings are its
own (padding hidden by the attention mask), and classifier-free guidance is applied per
sample.

The call is split into steps that other stages reuse: :meth:`SDXLPipeline.encode` builds a
batch's :class:`Conditioning`, :meth:`SDXLPipeline.denoise` runs the loop over any latents
(whole images or tiles) and :meth:`SDXLPipeline.decode` turns latents into images.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image

from .components import Components
from .errors import InvalidInput
from .text import PromptEncoder

__all__ = ["Sample", "Conditioning", "SDXLPipeline", "StepCallback"]

# Called after each denoising step with (step index, seconds the step took).
StepCallback = Callable[[int, float], None]


@dataclass(frozen=True)
class Sample:
    """One image to generate."""

    prompt: str
    seed: int
    guidance_scale: float


@dataclass
class Conditioning:
    """Everything the UNet is conditioned on for one batch; unconditional rows first, then
    conditional rows (classifier-free guidance runs both halves in one forward pass)."""

    states: torch.Tensor  # [2B, tokens, D]
    pooled: torch.Tensor  # [2B, P]
    mask: torch.Tensor | None  # [2B, tokens]
    time_ids: torch.Tensor  # [2B, 6]
    guidance: torch.Tensor  # [B, 1, 1, 1]

    def with_size(
        self, *, original: tuple[int, int], crop: tuple[int, int], target: tuple[int, int]
    ) -> Conditioning:
        """The same conditioning with other SDXL size ids (height, width order): tiles of
        a large image are crops of it."""
        ids = [original[1], original[0], crop[1], crop[0], target[1], target[0]]
        time_ids = torch.tensor([ids], device=self.time_ids.device, dtype=self.time_ids.dtype)
        return replace(self, time_ids=time_ids.repeat(self.time_ids.shape[0], 1))


class SDXLPipeline:
    """Batched text-to-image over one set of components on one device."""

    def __init__(self, components: Components, *, device: torch.device, dtype: torch.dtype):
        self.components = components.to(device, dtype)
        self.device, self.dtype = device, dtype
        self.encoder = PromptEncoder(self.components, device=device)
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

    def encode(self, samples: Sequence[Sample], *, width: int, height: int) -> Conditioning:
        """Prompt embeddings (SDXL's negative for an empty negative prompt is all zeros),
        size ids and per-sample guidance."""
        cond = self.encoder.encode([s.prompt for s in samples])
        uncond = cond.zeros_like()
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=self.device)
        return Conditioning(
            states=torch.cat([uncond.states, cond.states]).to(self.dtype),
            pooled=torch.cat([uncond.pooled, cond.pooled]).to(self.dtype),
            mask=None if cond.mask is None else torch.cat([uncond.mask, cond.mask]),
            time_ids=time_ids.to(self.dtype).repeat(2 * len(samples), 1),
            guidance=torch.tensor(
                [s.guidance_scale for s in samples], device=self.device, dtype=self.dtype
            ).view(-1, 1, 1, 1),
        )

    def noise(self, samples: Sequence[Sample], *, width: int, height: int) -> torch.Tensor:
        """Each sample's starting noise, drawn on the CPU from its own generator: the same
        seed gives the same start on every device and in every batch."""
        shape = (4, height // self.vae_scale, width // self.vae_scale)
        noise = [
            torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s.seed))
            for s in samples
        ]
        return torch.stack(noise).to(self.device, self.dtype)

    def predict_noise(
        self, latents: torch.Tensor, timestep: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        """One guided UNet evaluation for a batch of (already scaled) latents."""
        noise = self.components.unet(
            torch.cat([latents, latents]),
            timestep,
            encoder_hidden_states=cond.states,
            encoder_attention_mask=cond.mask,
            added_cond_kwargs={"text_embeds": cond.pooled, "time_ids": cond.time_ids},
        ).sample
        noise_uncond, noise_cond = noise.chunk(2)
        return noise_uncond + cond.guidance * (noise_cond - noise_uncond)

    def denoise(
        self,
        latents: torch.Tensor,
        cond: Conditioning,
        timesteps: torch.Tensor,
        *,
        on_step: StepCallback | None = None,
    ) -> torch.Tensor:
        """Run the scheduler over ``timesteps`` (set on ``self.components.scheduler``)."""
        scheduler = self.components.scheduler
        for index, timestep in enumerate(timesteps):
            started = time.perf_counter()
            model_input = scheduler.scale_model_input(latents, timestep)
            noise = self.predict_noise(model_input, timestep, cond)
            latents = scheduler.step(noise, timestep, latents).prev_sample
            if on_step is not None:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                on_step(index, time.perf_counter() - started)
        return latents

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """Latents to images, one sample at a time: VAE activations at full resolution are
        the largest tensors of the whole call."""
        vae = self.components.vae
        images = []
        for sample_latents in latents.float():
            decoded = vae.decode(sample_latents[None] / vae.config.scaling_factor).sample[0]
            pixels = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte()
            array = np.ascontiguousarray(pixels.permute(1, 2, 0).cpu().numpy())
            images.append(Image.fromarray(array))
        return images

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
        # 1. Check inputs.
        self.check_inputs(samples, width, height, steps)
        # 2. Conditioning: prompts, size ids, guidance.
        cond = self.encode(samples, width=width, height=height)
        # 3. Timesteps and starting noise.
        scheduler = self.components.scheduler
        scheduler.set_timesteps(steps, device=self.device)
        latents = self.noise(samples, width=width, height=height) * scheduler.init_noise_sigma
        # 4. Denoising loop.
        latents = self.denoise(latents, cond, scheduler.timesteps, on_step=on_step)
        # 5. Decode.
        return self.decode(latents)
