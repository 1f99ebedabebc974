"""The torch-free parts: buckets, seeds, tokens, enumerations, images, registry."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from pipeline import (
    LONGEST_TOKEN_BYTES,
    GenerationRequest,
    InvalidImage,
    ModelRegistry,
    ModelUnavailable,
    bucket_for,
    count_prompt_tokens,
    decode_image,
    derive_seed,
    enumerate_items,
)
from pipeline.geometry import Size
from pipeline.prompts import clip_tokenizer
from tests.fixtures.imports import HEAVY, modules_loaded_by


def test_import_is_light() -> None:
    loaded = modules_loaded_by(
        "import pipeline, pipeline.registry, pipeline.prompts, pipeline.images;"
        "pipeline.count_prompt_tokens('a cat')"
    )
    assert not HEAVY & loaded


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((2048, 2048), (1024, 1024)),
        ((2560, 1440), (1344, 768)),
        ((1440, 2560), (768, 1344)),
        ((16384, 1024), (4096, 256)),
        ((1024, 16384), (256, 4096)),
    ],
)
def test_sdxl_buckets(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert bucket_for(*size, base=1024, multiple=64) == expected


def test_bucket_areas_and_multiples() -> None:
    for width, height in [(2048, 2048), (2560, 1440), (1664, 2496), (3000, 2000), (5440, 3056)]:
        w, h = bucket_for(width, height, base=1024, multiple=64)
        assert w % 64 == 0 and h % 64 == 0
        assert abs(w * h - 1024**2) / 1024**2 < 0.1
    assert bucket_for(2048, 2048, base=64, multiple=4) == (64, 64)
    assert bucket_for(2560, 1440, base=64, multiple=4) == (84, 48)


def test_sizes_name_their_order() -> None:
    bucket = bucket_for(2560, 1440, base=64, multiple=4)
    assert (bucket.width, bucket.height, bucket.area) == (84, 48, 84 * 48)
    job = GenerationRequest(
        request_id="r", model="m", prompt="p", width=2560, height=1440, seeds=(1,), guidance_scale=5
    )
    assert job.size == Size(width=2560, height=1440)


def test_derive_seed() -> None:
    assert derive_seed(42, 0) == 42
    seeds = [derive_seed(42, i) for i in range(1, 16)]
    assert len(set(seeds)) == 15 and all(0 <= s < 2**31 for s in seeds)
    assert derive_seed(42, 1) == derive_seed(42, 1) != derive_seed(43, 1)


def test_token_counts_match_clip() -> None:
    assert count_prompt_tokens("A photo of a cat, in space! 85mm lens") == 13
    assert count_prompt_tokens("cat " * 2000) == 2000
    assert count_prompt_tokens("") == 0


def test_longest_token_bytes_matches_the_vocabulary() -> None:
    # Byte-level BPE spells every byte as one character, so a token's length is its bytes.
    longest = max(
        len(token.removesuffix("</w>"))
        for token in clip_tokenizer().get_vocab()
        if token not in ("<|startoftext|>", "<|endoftext|>")
    )
    assert longest == LONGEST_TOKEN_BYTES


def test_token_counting_releases_the_gil() -> None:
    # The shim counts tokens in a worker thread: the event loop must keep running meanwhile.
    ticks, done = [0], threading.Event()

    def tick() -> None:
        while not done.is_set():
            ticks[0] += 1
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    started = time.perf_counter()
    count_prompt_tokens("x" * 1_000_000)
    elapsed = time.perf_counter() - started
    done.set()
    ticker.join()
    # A free ticker manages several hundred ticks a second; one held off by the GIL gets
    # about twenty (one per switch interval).
    assert ticks[0] > 100 * elapsed, (ticks[0], elapsed)


@pytest.mark.parametrize(
    ("prompt", "items"),
    [
        (
            "Series of the same person at four life stages: child, adolescent, adult, elderly.",
            ["child", "adolescent", "adult", "elderly"],
        ),
        ("a cat, a dog and a bird", ["a cat", "a dog", "a bird"]),
        ("a cat, a dog, or a bird", ["a cat", "a dog", "a bird"]),
        ("1) a red car 2) a blue car 3) a bike", ["a red car", "a blue car", "a bike"]),
        ("Brand set: logo; poster; banner. Minimal style.", ["logo", "poster", "banner"]),
        ("Editorial photo on a rainy street at night, neon reflections, 85mm lens", []),
        ("A lighthouse at dawn", []),
        ("Portrait: a woman", []),
    ],
)
def test_enumerate_items(prompt: str, items: list[str]) -> None:
    assert enumerate_items(prompt) == items


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def test_decode_round_trips() -> None:
    assert decode_image(png(40, 30), max_pixels=10_000).size == (40, 30)
    jpeg = io.BytesIO()
    Image.new("RGB", (50, 20), (10, 200, 30)).save(jpeg, format="JPEG")
    assert decode_image(jpeg.getvalue(), max_pixels=10_000).mode == "RGB"
    assert decode_image(png(8, 8, "RGBA"), max_pixels=100).mode == "RGB"


def test_gif_first_frame() -> None:
    frames = [Image.new("P", (10, 10), color) for color in (1, 2)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    assert decode_image(buffer.getvalue(), max_pixels=1000).size == (10, 10)


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (60, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue(), max_pixels=10_000).size == (20, 60)


def bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge canvas."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (bomb(100_000, 100_000), "pixels|not an image"),
        (png(200, 200), "limit"),
        (b"not an image at all", "not an image"),
        (png(64, 64)[:120], "truncated|corrupt|not an image"),
        (b"%PDF-1.4 ...", "not an image"),
    ],
)
def test_decode_rejections(data: bytes, match: str) -> None:
    with pytest.raises(InvalidImage, match=match):
        decode_image(data, max_pixels=10_000)


def test_registry(tmp_path: Path) -> None:
    registry = ModelRegistry.from_config(None)
    assert registry.aliases() == ["xSD4.5"] and registry.get("xSD4.5").kind == "tiny"
    with pytest.raises(ModelUnavailable, match="xSD4.5"):
        registry.get("xSD9")
    weights = ModelRegistry.from_config(tmp_path / "sdxl").get("xSD4.5")
    with pytest.raises(ModelUnavailable, match=str(tmp_path / "sdxl")):
        weights.weights_dir()
    bench = ModelRegistry.from_config(None, include_benchmark_models=True)
    assert bench.aliases() == ["xSD4.5", "tiny", "sdxl-random"]
    assert [m["alias"] for m in registry.describe()] == ["xSD4.5"]


def test_registry_entries_name_scheduler_precision_and_tokenizers(tmp_path: Path) -> None:
    bench = ModelRegistry.from_config(None, include_benchmark_models=True)
    for alias in bench.aliases():
        spec = bench.get(alias)
        assert (spec.scheduler, spec.dtype, spec.tokenizer) == ("euler", "auto", "clip")
    weights = ModelRegistry.from_config(tmp_path / "sdxl").get("xSD4.5")
    assert (weights.scheduler, weights.dtype, weights.tokenizer) == ("euler", "auto", "weights")
    with pytest.raises(ValueError, match="only a weights directory"):
        replace(bench.get("tiny"), tokenizer="weights")


def test_sdxl_random_has_sdxl_size() -> None:
    code = (
        "import torch\n"
        "from diffusers import UNet2DConditionModel\n"
        "from accelerate import init_empty_weights\n"
        "from pipeline.components import sdxl_unet_config\n"
        "with init_empty_weights():\n"
        "    unet = UNet2DConditionModel(**sdxl_unet_config())\n"
        "print(sum(p.numel() for p in unet.parameters()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert abs(int(out.stdout) - 2_567_463_684) < 1_000_000
