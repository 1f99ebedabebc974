"""2K and 4K: upscale, refine whole or in blended tiles, exact sizes, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import ImageGenerator
from pipeline.geometry import Offset, Size
from pipeline.refine import Tile, TiledPredictor, chunks, tile_grid
from pipeline.sdxl import Sample, size_ids

from .conftest import request

FOUR_K = [(4096, 4096), (5440, 3056), (3056, 5440)]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize(("height", "width"), [(128, 128), (96, 170), (32, 32), (20, 300)])
def test_tiles_cover_the_latent_within_bounds(height: int, width: int) -> None:
    tiles = tile_grid(height, width, tile=32, overlap=8)
    covered = torch.zeros(height, width)
    for tile in tiles:
        assert tile.height <= 32 and tile.width <= 32
        assert tile.top + tile.height <= height and tile.left + tile.width <= width
        covered[tile.window] += 1
    assert covered.min() >= 1
    # Neighbours overlap by at least the overlap (where there is more than one tile).
    tops = sorted({t.top for t in tiles})
    for first, second in zip(tops, tops[1:], strict=False):
        assert first + min(32, height) - second >= 8


def test_one_tile_when_the_latent_fits() -> None:
    assert tile_grid(32, 24, tile=32, overlap=8) == [Tile(0, 0, 32, 24)]


def test_size_ids_are_height_first() -> None:
    """SDXL's ids: original (height, width), crop corner (top, left), target (height,
    width)."""
    ids = size_ids(
        original=Size(width=256, height=192),
        crop=Offset(left=64, top=32),
        target=Size(width=128, height=96),
    )
    assert ids == [192, 256, 32, 64, 96, 128]


def test_blended_tiles_reproduce_a_position_independent_prediction(tiny: ImageGenerator) -> None:
    """With a prediction that does not depend on context, blending the tiles must give
    it back exactly: the weights cover every latent pixel and sum to one."""
    refiner = tiny.refiner
    sample = Sample("a lighthouse", 3, 7.5)
    cond = tiny.pipeline.encode([sample], width=256, height=192)
    tiled = refiner.tiled_predictor(torch.Size((1, 4, 96, 128)), 256, 192)
    assert len(tiled.tiles) > 4
    doubling = TiledPredictor(
        lambda x, t, c: 2 * x,
        tiled.tiles,
        refiner.overlap,
        image_size=Size(256, 192),
        scale=tiny.pipeline.vae_scale,
        device=torch.device("cpu"),
    )
    latents = torch.randn(1, 4, 96, 128)
    blended = doubling(latents, torch.tensor(1.0), cond)
    torch.testing.assert_close(blended, 2 * latents)


@pytest.mark.parametrize("size", FOUR_K)
def test_4k_outputs_have_exact_sizes(tiny: ImageGenerator, size: tuple[int, int]) -> None:
    (image,) = tiny.generate(request(width=size[0], height=size[1]))
    assert image.size == size and image.mode == "RGB"


def test_4k_runs_the_unet_on_bucket_sized_tiles(tiny: ImageGenerator, monkeypatch) -> None:
    """Memory stays that of a bucket pass: no UNet call sees more than a tile, and the
    VAE tiles its work: the upscale's encodes and the refined images' decodes, one image
    at a time (tiling is off again afterwards, for the bucket images)."""
    shapes: list[tuple[int, ...]] = []
    real = tiny.pipeline.predict_noise

    def spy(latents, timestep, cond):
        shapes.append(tuple(latents.shape))
        return real(latents, timestep, cond)

    vae = tiny.pipeline.components.vae
    tiled: dict[str, list[tuple[int, ...]]] = {"encode": [], "decode": []}

    def tiling_spy(kind: str, method):
        def wrapper(x, *args, **kwargs):
            tiled[kind].append(tuple(x.shape))
            return method(x, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(tiny.pipeline, "predict_noise", spy)
    monkeypatch.setattr(vae, "_tiled_encode", tiling_spy("encode", vae._tiled_encode))
    monkeypatch.setattr(vae, "tiled_decode", tiling_spy("decode", vae.tiled_decode))
    tiny.generate(request(width=4096, height=4096, seeds=(1, 2)))
    tile = tiny.refiner.tile
    refine_calls = shapes[tiny.spec.steps :]
    assert len(refine_calls) > 4 and all(s[0] == 2 for s in refine_calls)
    assert max(max(s[-2:]) for s in shapes) <= tile
    width, height = tiny.refiner.working_size(4096, 4096)
    assert tiled["encode"] == [(1, 3, height, width)] * 2
    scale = tiny.pipeline.vae_scale
    assert tiled["decode"] == [(1, 4, height // scale, width // scale)] * 2
    assert not vae.use_tiling


def test_refinement_adds_detail_beyond_a_resize(tiny: ImageGenerator) -> None:
    job = request(width=2048, height=2048)
    (refined,) = tiny.generate(job)
    bucket = tiny.bucket(job)
    (plain,) = tiny.pipeline(tiny.samples(job), width=bucket[0], height=bucket[1], steps=4)
    resized = plain.resize(refined.size, Image.Resampling.LANCZOS)
    difference = np.abs(pixels(refined) - pixels(resized)).mean()
    assert difference > 2, difference


def test_refinement_is_batch_invariant_and_mixes_output_sizes(tiny: ImageGenerator) -> None:
    """A 2K and a 4K request of one aspect ratio share the bucket pass, then refine at
    their own sizes; each equals itself generated alone."""
    two_k = request(width=2048, height=2048, seeds=(5,))
    four_k = request(width=4096, height=4096, seeds=(6, 7))
    assert tiny.bucket(two_k) == tiny.bucket(four_k)
    together = tiny.generate_batch([two_k, four_k])
    assert [img.size for img in together[0]] == [(2048, 2048)]
    assert [img.size for img in together[1]] == [(4096, 4096)] * 2
    for mixed, alone in [
        (together[0][0], tiny.generate(two_k)[0]),
        (together[1][1], tiny.generate(request(width=4096, height=4096, seeds=(7,)))[0]),
    ]:
        assert np.abs(pixels(mixed) - pixels(alone)).max() <= 1


def test_out_of_memory_while_refining_splits_the_work(tiny: ImageGenerator, monkeypatch) -> None:
    calls: list[int] = []
    real = tiny.refiner.__class__.__call__

    def small_gpu(self, samples, latents, **size):
        if len(samples) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        calls.append(len(samples))
        return real(self, samples, latents, **size)

    monkeypatch.setattr(type(tiny.refiner), "__call__", small_gpu)
    (images,) = tiny.generate_batch([request(width=4096, height=4096, seeds=(1, 2, 3))])
    assert [image.size for image in images] == [(4096, 4096)] * 3
    assert calls == [1, 1, 1]


def test_whole_refinement_chunks_keep_frames_together() -> None:
    samples = [
        Sample("a", 1, 5.0),
        Sample("b", 2, 5.0, group=1),
        Sample("c", 3, 5.0, group=1),
        Sample("d", 4, 5.0, group=1),
        Sample("e", 5, 5.0),
        Sample("f", 6, 5.0),
    ]
    assert chunks(samples, 2) == [(0, 1), (1, 4), (4, 6)]
    assert chunks(samples, 4) == [(0, 4), (4, 6)]
    assert chunks(samples, 1) == [(0, 1), (1, 4), (4, 5), (5, 6)]


def test_frames_with_references_refine_in_tiles(tiny: ImageGenerator) -> None:
    """A 4K series with a reference: the frame and reference attention run on every tile
    (the pipeline raises when a UNet call with such rows skips them)."""
    face = Image.new("RGB", (40, 40), (220, 30, 30))
    series = request(
        prompt="image_1 for the face. The same person as a child, adult, elderly.",
        width=4096,
        height=4096,
        seeds=(11, 12, 13),
        sequential=True,
        references=(face,),
    )
    frames = tiny.generate(series)
    assert [frame.size for frame in frames] == [(4096, 4096)] * 3
    alone = tiny.generate(request(width=4096, height=4096, seeds=(12,)))[0]
    assert np.abs(pixels(frames[1]) - pixels(alone)).mean() > 1
