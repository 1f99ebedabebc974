"""SDXL components: the tiny random model, the full-size random model, or real weights,
each with its IP-Adapter for reference images (:mod:`pipeline.references`).

``tiny`` follows diffusers' own SDXL test configuration (UNet ``block_out_channels=(32,
64)``, ``cross_attention_dim=64``, two 32-wide CLIP text encoders) but keeps CLIP's full
vocabulary so the real tokenizer's ids fit. Random weights are drawn from a fixed seed, so
every worker process builds the same model and a request reproduces across workers.

The scheduler, the precision and the tokenizers are the registry entry's
(:class:`pipeline.registry.ModelSpec`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from .errors import ModelUnavailable
from .prompts import EOS_ID, VOCAB_SIZE, PromptTokenizer, load_tokenizer, sdxl_tokenizers
from .references import (
    ReferenceModels,
    sdxl_random_references,
    tiny_references,
    weights_references,
)
from .registry import SDXL_RANDOM, TINY, WEIGHTS_TOKENIZER, ModelSpec, SchedulerName

__all__ = [
    "Components",
    "build_components",
    "sdxl_unet_config",
    "sdxl_vae_config",
    "sdxl_text_configs",
]

# The random weights of `tiny` and `sdxl-random` are drawn from this seed.
WEIGHTS_SEED = 20251125

# The registry's scheduler names. The denoising loop and the refiner's partial schedule
# (`set_begin_index`, `add_noise`) are tested with Euler only.
SCHEDULERS: dict[SchedulerName, type[EulerDiscreteScheduler]] = {"euler": EulerDiscreteScheduler}

# SDXL base 1.0's Euler scheduler settings.
_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    timestep_spacing="leading",
    prediction_type="epsilon",
)


@dataclass
class Components:
    """What a pipeline is built from."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection
    scheduler: EulerDiscreteScheduler
    # The text encoders' tokenizers: CLIP's BPE, SDXL's padding, unless the weights ship
    # their own.
    tokenizer: PromptTokenizer = field(default_factory=lambda: sdxl_tokenizers()[0])
    tokenizer_2: PromptTokenizer = field(default_factory=lambda: sdxl_tokenizers()[1])
    # The IP-Adapter; None for weights that come without one (references then fail).
    references: ReferenceModels | None = None

    def to(
        self, device: torch.device, dtype: torch.dtype, vae_dtype: torch.dtype = torch.float32
    ) -> Components:
        """Move every module; the VAE to ``vae_dtype`` (float32 by default: SDXL's VAE
        overflows in float16)."""
        modules = [(self.unet, dtype), (self.text_encoder, dtype), (self.text_encoder_2, dtype)]
        if self.references is not None:
            modules.append((self.references, dtype))
        for module, wanted in [*modules, (self.vae, vae_dtype)]:
            # Cast only when needed: diffusers warns on every dtype cast through `to()`.
            if module.dtype != wanted:
                module.to(dtype=wanted)
            module.to(device=device).eval().requires_grad_(False)
        return self


def _text_config(
    *, hidden: int, layers: int, heads: int, intermediate: int, act: str, projection: int
) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        hidden_act=act,
        projection_dim=projection,
        max_position_embeddings=77,
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
    )


def sdxl_unet_config() -> dict[str, Any]:
    """SDXL base 1.0's UNet configuration (about 2.57 B parameters)."""
    return dict(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        attention_head_dim=(5, 10, 20),
        transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )


def sdxl_vae_config() -> dict[str, Any]:
    """SDXL base 1.0's VAE configuration (about 84 M parameters)."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=1024,
        scaling_factor=0.13025,
        force_upcast=True,
    )


def sdxl_text_configs() -> tuple[CLIPTextConfig, CLIPTextConfig]:
    """SDXL base 1.0's two text encoders: CLIP ViT-L and OpenCLIP ViT-bigG."""
    return (
        _text_config(
            hidden=768, layers=12, heads=12, intermediate=3072, act="quick_gelu", projection=768
        ),
        _text_config(
            hidden=1280, layers=32, heads=20, intermediate=5120, act="gelu", projection=1280
        ),
    )


def _tiny(spec: ModelSpec) -> Components:
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=2,
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=64,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + pooled 32
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        latent_channels=4,
        sample_size=64,
    )
    text = dict(hidden=32, layers=5, heads=4, intermediate=37, act="gelu", projection=32)
    components = Components(
        unet=unet,
        vae=vae,
        text_encoder=CLIPTextModel(_text_config(**text)),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(**text)),
        scheduler=SCHEDULERS[spec.scheduler](**_SCHEDULER),
    )
    # Drawn last, so the other components' weights do not depend on the adapter's.
    components.references = tiny_references(unet, _adapter_generator())
    return components


def _adapter_generator() -> torch.Generator:
    return torch.Generator("cpu").manual_seed(WEIGHTS_SEED + 1)


def _sdxl_random(spec: ModelSpec) -> Components:
    text_config, text_config_2 = sdxl_text_configs()
    components = Components(
        unet=UNet2DConditionModel(**sdxl_unet_config()),
        vae=AutoencoderKL(**sdxl_vae_config()),
        text_encoder=CLIPTextModel(text_config),
        text_encoder_2=CLIPTextModelWithProjection(text_config_2),
        scheduler=SCHEDULERS[spec.scheduler](**_SCHEDULER),
    )
    components.references = sdxl_random_references(components.unet, _adapter_generator())
    return components


def _weights(spec: ModelSpec, dtype: torch.dtype) -> Components:
    path = spec.weights_dir()
    load: dict[str, Any] = {"local_files_only": True, "torch_dtype": dtype}
    try:
        tokenizer, tokenizer_2 = _tokenizers(spec, path)
        components = Components(
            unet=UNet2DConditionModel.from_pretrained(path, subfolder="unet", **load),
            vae=AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32),
            text_encoder=CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **load),
            text_encoder_2=CLIPTextModelWithProjection.from_pretrained(
                path, subfolder="text_encoder_2", **load
            ),
            # The directory's scheduler settings, in the class the registry names.
            scheduler=SCHEDULERS[spec.scheduler].from_pretrained(path, subfolder="scheduler"),
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
        )
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"{spec.alias}: could not load weights from {path}: {exc}") from exc
    components.references = weights_references(path, components.unet, dtype)
    return components


def _tokenizers(spec: ModelSpec, path: Path) -> tuple[PromptTokenizer, PromptTokenizer]:
    """The weights directory's ``tokenizer/`` and ``tokenizer_2/`` where it has them and
    the registry entry asks for them; CLIP's BPE with SDXL's padding otherwise."""
    defaults = sdxl_tokenizers()
    if spec.tokenizer != WEIGHTS_TOKENIZER:
        return defaults
    first, second = (
        load_tokenizer(path / name) if (path / name).is_dir() else default
        for name, default in zip(("tokenizer", "tokenizer_2"), defaults, strict=True)
    )
    return first, second


def build_components(spec: ModelSpec, *, dtype: torch.dtype) -> Components:
    """Build (random models) or load (weights) the components of ``spec``."""
    if spec.kind == "weights":
        return _weights(spec, dtype)
    builder = {TINY: _tiny, SDXL_RANDOM: _sdxl_random}[spec.kind]
    # Weights are drawn under a private generator state so the model is the same in every
    # process, whatever the process did with torch's global RNG before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(WEIGHTS_SEED)
        return builder(spec)
