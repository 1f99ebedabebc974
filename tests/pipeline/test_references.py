"""Reference images through the IP-Adapter, per sample, per reference and per layer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.models.embeddings import IPAdapterPlusImageProjection
from PIL import Image

from pipeline import ImageGenerator, ModelUnavailable, PipelineError
from pipeline.attention import CallState
from pipeline.consistency import ConsistencyConfig, install_consistency
from pipeline.geometry import Offset, Size
from pipeline.ip_adapter import ReferenceAttention, install_ip_adapter
from pipeline.references import (
    ADAPTER_DIR,
    ADAPTER_FILE,
    ENCODER_DIR,
    load_references,
    random_adapter,
    weights_references,
    write_adapter,
)
from pipeline.roles import ReferenceRole
from pipeline.sdxl import ReferenceInput, Sample

from .conftest import request

SIZE = 64


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def noise_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((48, 64, 3)) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def red_image() -> Image.Image:
    return Image.new("RGB", (40, 40), (220, 30, 30))


def run(tiny: ImageGenerator, *samples: Sample) -> list[np.ndarray]:
    images = tiny.pipeline(list(samples), width=SIZE, height=SIZE, steps=4)
    return [pixels(image) for image in images]


def sample(*references: ReferenceInput, prompt: str = "a lighthouse at dawn") -> Sample:
    return Sample(prompt, 7, 7.5, references)


@pytest.fixture(scope="module")
def plain(tiny: ImageGenerator) -> np.ndarray:
    return run(tiny, sample())[0]


def test_weight_zero_equals_no_adapter(tiny: ImageGenerator, plain, noise_image) -> None:
    (zero,) = run(tiny, sample(ReferenceInput(noise_image, weight=0.0)))
    assert np.abs(zero - plain).max() <= 1


def test_references_change_the_image(tiny: ImageGenerator, plain, noise_image, red_image) -> None:
    (noise,) = run(tiny, sample(ReferenceInput(noise_image, weight=0.6)))
    (red,) = run(tiny, sample(ReferenceInput(red_image, weight=0.6)))
    assert np.abs(noise - plain).mean() > 1
    assert np.abs(noise - red).mean() > 1


def test_reference_free_neighbour_is_unaffected(
    tiny: ImageGenerator, plain, noise_image, red_image
):
    referenced = Sample(
        "a red fox", 3, 5.0, (ReferenceInput(noise_image), ReferenceInput(red_image, weight=1.0))
    )
    _, together, _ = run(tiny, referenced, sample(), referenced)
    assert np.abs(together - plain).max() <= 1


def test_weights_per_reference(tiny: ImageGenerator, plain, noise_image, red_image) -> None:
    (alone,) = run(tiny, sample(ReferenceInput(noise_image, weight=0.8)))
    # A second reference of weight 0 is a no-op; the first keeps its own weight.
    (paired,) = run(
        tiny,
        sample(ReferenceInput(noise_image, weight=0.8), ReferenceInput(red_image, weight=0.0)),
    )
    assert np.abs(paired - alone).max() <= 1
    (weak,) = run(tiny, sample(ReferenceInput(noise_image, weight=0.2)))
    assert np.abs(alone - plain).mean() > 2 * np.abs(weak - plain).mean()
    cond = tiny.pipeline.encode(
        [sample(ReferenceInput(noise_image, weight=0.8), ReferenceInput(red_image))],
        width=SIZE,
        height=SIZE,
    )
    assert cond.references is not None
    default = ReferenceRole().weight
    assert torch.allclose(cond.references.scales, torch.tensor([[0.8, default]] * 2))


@pytest.fixture
def ip_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, float]]:
    """Each layer that computed a reference term, with the largest weight it applied."""
    calls: dict[str, float] = {}
    original = ReferenceAttention._reference_attention

    def spy(self, attn, query, tokens, weights):
        calls[self.layer] = max(calls.get(self.layer, 0.0), float(weights.max()))
        return original(self, attn, query, tokens, weights)

    monkeypatch.setattr(ReferenceAttention, "_reference_attention", spy)
    yield calls


def test_style_reference_acts_only_in_style_layers(tiny: ImageGenerator, noise_image, ip_calls):
    style = ReferenceInput(noise_image, ReferenceRole(kind="style"))
    cond = tiny.pipeline.encode([sample(style)], width=SIZE, height=SIZE)
    state = CallState(cond.references, (), cond.view, Size(SIZE // 2, SIZE // 2), 999.0)
    assert state.reference_rows(style_layer=False) is None
    rows, scales = state.reference_rows(style_layer=True)
    assert rows.tolist() == [0, 1] and scales.tolist() == [[1.0], [1.0]]

    run(tiny, sample(style))
    assert ip_calls and all(layer.startswith("up_blocks.0.attentions.1.") for layer in ip_calls), (
        sorted(ip_calls)
    )
    ip_calls.clear()
    run(tiny, sample(ReferenceInput(noise_image, ReferenceRole(kind="face"))))
    assert any(layer.startswith("down_blocks.") for layer in ip_calls)


def test_left_region_masks_the_left_half(tiny: ImageGenerator, plain, noise_image) -> None:
    left = ReferenceInput(noise_image, ReferenceRole(region="left"), weight=1.0)
    cond = tiny.pipeline.encode([sample(left)], width=SIZE, height=SIZE)
    latent = Size(SIZE // 2, SIZE // 2)
    state = CallState(cond.references, (), cond.view, latent, 999.0)
    mask = state.reference_masks(16)  # tiny's cross-attention runs on a 4x4 grid at 64 px
    assert mask is not None
    grid = mask[1, :, 0].view(4, 4)
    assert grid[:, :2].eq(1).all() and grid[:, 2:].eq(0).all()
    # A tile on the right half of the image sees none of the left region.
    # Tiles of a 128x64 image (width, height): the right one sees none of the left region.
    right = cond.with_size(
        original=Size(2 * SIZE, SIZE), crop=Offset(SIZE, 0), target=Size(SIZE, SIZE)
    )
    assert right.view == (0.0, 0.5, 1.0, 1.0)
    assert (
        CallState(right.references, (), right.view, latent, 999.0).reference_masks(16).eq(0).all()
    )
    left_tile = cond.with_size(
        original=Size(2 * SIZE, SIZE), crop=Offset(0, 0), target=Size(SIZE, SIZE)
    )
    assert (
        CallState(left_tile.references, (), left_tile.view, latent, 999.0)
        .reference_masks(16)[1]
        .eq(1)
        .all()
    )

    (image,) = run(tiny, sample(left))
    change = np.abs(image - plain).mean(axis=2)
    assert change[:, : SIZE // 2].mean() > 1.2 * change[:, SIZE // 2 :].mean()


def test_background_takes_what_regions_leave(tiny: ImageGenerator, noise_image, red_image) -> None:
    both = sample(
        ReferenceInput(noise_image, ReferenceRole(region="left")),
        ReferenceInput(red_image, ReferenceRole(region="background")),
    )
    cond = tiny.pipeline.encode([both], width=SIZE, height=SIZE)
    state = CallState(cond.references, (), cond.view, Size(SIZE // 2, SIZE // 2), 999.0)
    masks = state.reference_masks(16)[1].view(4, 4, 2)
    assert torch.equal(masks[..., 0] + masks[..., 1], torch.ones(4, 4))


def test_generator_gives_each_reference_its_role(tiny: ImageGenerator, noise_image, red_image):
    job = request(
        prompt="image_2 on the left, use image_1 for the style",
        width=SIZE,
        height=SIZE,
        references=(noise_image, red_image),
    )
    (only,) = tiny.samples(job)
    assert [r.image for r in only.references] == [noise_image, red_image]
    assert [(r.role.kind, r.role.region) for r in only.references] == [
        ("style", None),
        ("subject", "left"),
    ]
    cond = tiny.pipeline.encode([only], width=SIZE, height=SIZE)
    assert cond.references.style[:, 0].all() and not cond.references.style[:, 1].any()
    assert cond.references.regions[1, 1].tolist() == [0.0, 0.0, 1.0, 0.5]
    # Both halves of the guided batch carry the weights; only cond rows carry the image.
    assert not torch.equal(cond.references.tokens[0], cond.references.tokens[1])
    (image,) = tiny.generate(job)
    (text_only,) = tiny.generate(request(prompt=job.prompt, width=SIZE, height=SIZE))
    assert np.abs(pixels(image) - pixels(text_only)).mean() > 1


def test_references_without_an_adapter_fail(tiny: ImageGenerator, noise_image, monkeypatch) -> None:
    monkeypatch.setattr(tiny.pipeline.components, "references", None)
    job = request(width=SIZE, height=SIZE, references=(noise_image,))
    (outcome,) = tiny.generate_batch([job])
    assert isinstance(outcome, ModelUnavailable)
    with pytest.raises(ModelUnavailable, match="IP-Adapter"):
        run(tiny, sample(ReferenceInput(noise_image)))


def test_replaced_processors_are_detected(tiny: ImageGenerator, noise_image) -> None:
    unet = tiny.pipeline.components.unet
    unet.set_attn_processor(AttnProcessor2_0())
    try:
        with pytest.raises(PipelineError, match="not installed"):
            run(tiny, sample(ReferenceInput(noise_image)))
    finally:
        references = tiny.pipeline.components.references
        install_ip_adapter(unet, tiny.pipeline.attention, references.layers)
        install_consistency(unet, tiny.pipeline.attention, ConsistencyConfig())


def test_adapter_loads_from_a_weights_directory(tiny: ImageGenerator, tmp_path: Path, noise_image):
    unet = tiny.pipeline.components.unet
    built = tiny.pipeline.components.references
    assert weights_references(tmp_path, unet, torch.float32) is None
    folder = tmp_path / ADAPTER_DIR
    built.image_encoder.save_pretrained(folder / ENCODER_DIR)
    write_adapter(folder / ADAPTER_FILE, random_adapter(unet, 32, torch.Generator().manual_seed(1)))
    loaded = weights_references(tmp_path, unet, torch.float32)
    with torch.inference_mode():
        cond, uncond = loaded.encode([noise_image])
    assert cond.shape == uncond.shape == (1, 4, unet.config.cross_attention_dim)
    assert loaded.layers.names == built.layers.names
    # An adapter trained for another image encoder is refused at load, not at request time.
    write_adapter(folder / ADAPTER_FILE, random_adapter(unet, 16, torch.Generator()))
    with pytest.raises(ModelUnavailable, match="image features of size 16"):
        weights_references(tmp_path, unet, torch.float32)
    mismatched = random_adapter(unet, 32, torch.Generator())
    mismatched["ip_adapter"]["1.to_k_ip.weight"] = torch.zeros(3, 3)
    write_adapter(folder / ADAPTER_FILE, mismatched)
    with pytest.raises(ModelUnavailable, match="does not fit this UNet"):
        weights_references(tmp_path, unet, torch.float32)


def plus_projection(embed_dims: int, output_dims: int, generator: torch.Generator) -> dict:
    """IP-Adapter Plus's resampler (4 blocks, 4 queries, one 64-wide head) with random
    weights, under the original checkpoint's names."""
    hidden, inner, ff = 64, 64, 256

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.05

    state = {
        "latents": rand(1, 4, hidden),
        "proj_in.weight": rand(hidden, embed_dims),
        "proj_in.bias": rand(hidden),
        "proj_out.weight": rand(output_dims, hidden),
        "proj_out.bias": rand(output_dims),
        "norm_out.weight": torch.ones(output_dims),
        "norm_out.bias": torch.zeros(output_dims),
    }
    for block in range(4):
        attention, feed_forward = f"layers.{block}.0.", f"layers.{block}.1."
        for norm in ("norm1", "norm2"):
            state[f"{attention}{norm}.weight"] = torch.ones(hidden)
            state[f"{attention}{norm}.bias"] = torch.zeros(hidden)
        state[f"{attention}to_q.weight"] = rand(inner, hidden)
        state[f"{attention}to_kv.weight"] = rand(2 * inner, hidden)
        state[f"{attention}to_out.weight"] = rand(hidden, inner)
        state[f"{feed_forward}0.weight"] = torch.ones(hidden)
        state[f"{feed_forward}0.bias"] = torch.zeros(hidden)
        state[f"{feed_forward}1.weight"] = rand(ff, hidden)
        state[f"{feed_forward}3.weight"] = rand(hidden, ff)
    return state


def test_plus_adapters_load(tiny: ImageGenerator, noise_image) -> None:
    """The Plus resampler comes through diffusers' converter of the original names: its
    to_kv is split into the attention's key and value, and it reads the encoder's hidden
    states."""
    unet = tiny.pipeline.components.unet
    encoder = tiny.pipeline.components.references.image_encoder
    generator = torch.Generator().manual_seed(3)
    projection = plus_projection(encoder.config.hidden_size, 64, generator)
    adapter = {
        "image_proj": projection,
        "ip_adapter": random_adapter(unet, 32, generator)["ip_adapter"],
    }
    models = load_references(unet, encoder, adapter)
    assert isinstance(models.projection, IPAdapterPlusImageProjection)
    key, value = projection["layers.2.0.to_kv.weight"].chunk(2)
    assert torch.equal(models.projection.layers[2].attn.to_k.weight, key)
    assert torch.equal(models.projection.layers[2].attn.to_v.weight, value)
    with torch.inference_mode():
        cond, uncond = models.encode([noise_image])
    assert cond.shape == uncond.shape == (1, 4, unet.config.cross_attention_dim)
