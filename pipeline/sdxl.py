"""A batched SDXL text-to-image loop over diffusers components.

Every sample of a batch carries its own prompt, seed and guidance scale, so different
requests of one resolution can share a forward pass. A sample's result does not depend on
its neighbours: its starting noise comes from its own generator, its embeddings are its
own (padding hidden by the attention mask), and classifier-free guidance is applied per
sample.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .components import Components
from .errors import InvalidInput
from .text import PromptEncoder

__all__ = ["Sample", "SDXLPipeline", "StepCallback"]

# Called after each denoising step with (step index, seconds the step took).
StepCallback = Callable[[int, float], None]


@dataclass(frozen=True)
class Sample:
    """One image to generate."""

    prompt: str
    seed: int
    guidance_scale: float


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

    def check_inputs(self, samples: Sequence[Sample], width: int, height: int, steps: int) -> None:
        """Fail before any work, naming the argument and its value."""
        if not samples:
            raise InvalidInput("samples must not be empty.")
        multiple = self.vae_scale * self.latent_multiple
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

    def _latents(self, samples: Sequence[Sample], width: int, height: int) -> torch.Tensor:
        shape = (4, height // self.vae_scale, width // self.vae_scale)
        # Noise is drawn on the CPU from each sample's own generator: the same seed gives
        # the same starting point on every device and in every batch.
        noise = [
            torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s.seed))
            for s in samples
        ]
        return torch.stack(noise).to(self.device, self.dtype)

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
        unet, scheduler = self.components.unet, self.components.scheduler
        batch = len(samples)

        # 2. Encode prompts; SDXL's negative for an empty negative prompt is all zeros.
        cond = self.encoder.encode([s.prompt for s in samples])
        uncond = cond.zeros_like()
        states = torch.cat([uncond.states, cond.states]).to(self.dtype)
        pooled = torch.cat([uncond.pooled, cond.pooled]).to(self.dtype)
        mask = None if cond.mask is None else torch.cat([uncond.mask, cond.mask])

        # 3. Size conditioning: original size, crop (0, 0), target size.
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=self.device)
        time_ids = time_ids.to(self.dtype).repeat(2 * batch, 1)

        # 4. Timesteps and starting noise.
        scheduler.set_timesteps(steps, device=self.device)
        latents = self._latents(samples, width, height) * scheduler.init_noise_sigma
        guidance = torch.tensor(
            [s.guidance_scale for s in samples], device=self.device, dtype=self.dtype
        ).view(-1, 1, 1, 1)

        # 5. Denoising loop, classifier-free guidance per sample.
        for index, timestep in enumerate(scheduler.timesteps):
            started = time.perf_counter()
            model_input = scheduler.scale_model_input(torch.cat([latents, latents]), timestep)
            noise = unet(
                model_input,
                timestep,
                encoder_hidden_states=states,
                encoder_attention_mask=mask,
                added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
            ).sample
            noise_uncond, noise_cond = noise.chunk(2)
            noise = noise_uncond + guidance * (noise_cond - noise_uncond)
            latents = scheduler.step(noise, timestep, latents).prev_sample
            if on_step is not None:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                on_step(index, time.perf_counter() - started)

        # 6. Decode one sample at a time: VAE activations at full resolution are the
        # largest tensors of the whole call.
        vae = self.components.vae
        images = []
        for sample_latents in latents.float():
            decoded = vae.decode(sample_latents[None] / vae.config.scaling_factor).sample[0]
            pixels = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte()
            images.append(
                Image.fromarray(np.ascontiguousarray(pixels.permute(1, 2, 0).cpu().numpy()))
            )
        return images
