"""Our pipeline against diffusers' own ``StableDiffusionXLPipeline`` on the same ``tiny``
components, starting noise and scheduler: the bucket images must be the same to the bit,
square or not, with a reference or without.

diffusers does its own part of the work: it tokenizes and encodes the prompt (CLIP's
tokenizer built from our vocabulary, SDXL's zero embedding for the empty negative prompt),
loads the IP-Adapter from a safetensors file with ``load_ip_adapter``, preprocesses the
reference with the CLIP image processor it builds itself and runs its own IP-Adapter
attention and VAE decode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image

from pipeline import ImageGenerator
from pipeline.components import _adapter_generator, build_components
from pipeline.references import ADAPTER_FILE, random_adapter, write_adapter

from .conftest import clip_tokenizers, request

# tiny's square bucket and its bucket for 1152x896, wider than the VAE's 64 px sample size
# (where diffusers' VAE tiling, when switched on, would engage).
SIZES = [(64, 64), (72, 56)]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def reference() -> Image.Image:
    """80x60: its short side to the encoder's 32 px makes the long one 42.67, which CLIP's
    processor truncates to 42 (rounding would give 43 and another crop)."""
    rng = np.random.default_rng(1)
    return Image.fromarray((rng.random((60, 80, 3)) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def diffusers_pipelines(
    tiny: ImageGenerator, tmp_path_factory: pytest.TempPathFactory
) -> dict[bool, StableDiffusionXLPipeline]:
    """diffusers' pipeline without and with the IP-Adapter (once loaded, its UNet needs
    image embeddings on every call), each on its own copy of tiny's components
    (``load_ip_adapter`` replaces the UNet's attention processors)."""
    tokenizer, tokenizer_2 = clip_tokenizers()
    folder = tmp_path_factory.mktemp("ip_adapter")
    pipelines = {}
    for adapter in (False, True):
        components = build_components(tiny.spec, dtype=torch.float32)
        assert components.references is not None
        encoder = components.references.image_encoder
        pipe = StableDiffusionXLPipeline(
            vae=components.vae,
            text_encoder=components.text_encoder,
            text_encoder_2=components.text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=components.unet,
            scheduler=components.scheduler,
            image_encoder=encoder if adapter else None,
            add_watermarker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        if adapter:
            # tiny's adapter, drawn again from the generator tiny draws it from.
            state = random_adapter(
                components.unet, encoder.config.projection_dim, _adapter_generator()
            )
            write_adapter(Path(folder) / ADAPTER_FILE, state)
            pipe.load_ip_adapter(
                str(folder),
                subfolder="",
                weight_name=ADAPTER_FILE,
                image_encoder_folder=None,  # the encoder is given above
                local_files_only=True,
            )
        pipelines[adapter] = pipe
    return pipelines


@pytest.mark.parametrize("with_reference", [False, True], ids=["text", "reference"])
@pytest.mark.parametrize("size", SIZES, ids=["square", "non-square"])
def test_bucket_images_equal_diffusers(
    tiny: ImageGenerator,
    diffusers_pipelines: dict[bool, StableDiffusionXLPipeline],
    reference: Image.Image,
    size: tuple[int, int],
    with_reference: bool,
) -> None:
    width, height = size
    job = request(width=width, height=height, references=(reference,) if with_reference else ())
    # Generated at its bucket: no refinement and no resize, the image is the decode.
    assert tiny.bucket(job) == size
    samples = tiny.samples(job)
    steps = tiny.spec.steps
    pipe = diffusers_pipelines[with_reference]
    extra = {}
    if with_reference:
        pipe.set_ip_adapter_scale(samples[0].references[0].scale)
        extra["ip_adapter_image"] = reference

    def theirs(output_type: str):
        return pipe(
            prompt=job.prompt,
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=job.guidance_scale,
            latents=tiny.pipeline.noise(samples, width=width, height=height),
            output_type=output_type,
            **extra,
        ).images

    ours = tiny.pipeline.latents(samples, width=width, height=height, steps=steps)
    latent_difference = (ours - theirs("latent")).abs().max().item()
    (image,) = tiny.generate(job)
    (their_image,) = theirs("pil")
    assert image.size == their_image.size == size
    image_difference = np.abs(pixels(image) - pixels(their_image)).max()
    assert (latent_difference, image_difference) == (0, 0)
