"""Reference decoding against hostile bytes: every failure is InvalidImage, and decoding
stays within its memory budget, reduced on load where the format allows."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image, ImageChops, ImageFile, ImageOps, ImageStat

from pipeline import DecodeBudget, InvalidImage, decode_image
from tests.fixtures.images import INFLATING_CHUNKS, inflating_png, text_flood_png


@pytest.mark.parametrize("kind", INFLATING_CHUNKS)
@pytest.mark.parametrize("after_idat", [False, True], ids=["before-IDAT", "after-IDAT"])
def test_chunk_that_inflates_past_pillows_limit_is_invalid(kind: str, after_idat: bool) -> None:
    data = inflating_png(kind, after_idat=after_idat)
    assert len(data) < 64 * 1024
    with pytest.raises(InvalidImage, match="ValueError: Decompressed data too large"):
        decode_image(data, max_pixels=10_000)


def test_text_chunks_past_pillows_total_are_invalid() -> None:
    with pytest.raises(InvalidImage, match="Too much memory used in text chunks"):
        decode_image(text_flood_png(), max_pixels=10_000)


# -- memory: reduce on load, within a budget ------------------------------------------------


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int]]]:
    """The size of every raster Pillow decodes from a file, in order."""
    sizes: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile):  # type: ignore[no-untyped-def]
        if self.tile:  # not decoded yet
            sizes.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    yield sizes


def test_budget_never_lets_more_than_its_limit_in() -> None:
    budget = DecodeBudget(100)
    lock = threading.Lock()
    inside = peak = 0

    def hold(nbytes: int) -> None:
        nonlocal inside, peak
        with budget.hold(nbytes):
            with lock:
                inside += nbytes
                peak = max(peak, inside)
            time.sleep(0.005)
            with lock:
                inside -= nbytes

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(hold, [10, 35, 60, 100, 1, 45] * 8))
    assert 60 < peak <= 100 and budget.held_bytes == 0
    with pytest.raises(ValueError, match="never fit"), budget.hold(101):
        pass


@pytest.mark.parametrize("limited", [True, False], ids=["budget", "no-budget"])
def test_decodes_in_threads_stay_within_the_budget(
    monkeypatch: pytest.MonkeyPatch, limited: bool
) -> None:
    """Twelve threads decode 1600x1200 PNGs (7.7 MB rasters each); with a budget of two and
    a half rasters, at most two are ever being decoded at once, and all succeed."""
    data = encoded(Image.new("RGB", (1600, 1200), (10, 120, 230)), "PNG")
    raster = 1600 * 1200 * 4
    budget = DecodeBudget(raster * 5 // 2)
    lock = threading.Lock()
    decoding = peak = 0
    original = ImageFile.ImageFile.load

    def slow_load(self: ImageFile.ImageFile):  # type: ignore[no-untyped-def]
        nonlocal decoding, peak
        if not self.tile:
            return original(self)
        with lock:
            decoding += self.width * self.height * 4
            peak = max(peak, decoding)
        time.sleep(0.05)  # let every thread that is allowed to start decoding do so
        try:
            return original(self)
        finally:
            with lock:
                decoding -= self.width * self.height * 4

    monkeypatch.setattr(ImageFile.ImageFile, "load", slow_load)

    def decode(_: int) -> Image.Image:
        return decode_image(
            data, max_pixels=10**7, max_side=1024, budget=budget if limited else None
        )

    with ThreadPoolExecutor(max_workers=12) as pool:
        images = list(pool.map(decode, range(12)))
    assert [image.size for image in images] == [(1024, 768)] * 12
    if limited:
        assert peak <= budget.limit_bytes and budget.held_bytes == 0
    else:  # the measure sees the overlap the budget prevents
        assert peak > budget.limit_bytes


def test_jpeg_is_decoded_at_a_reduced_scale_then_oriented(loads: list[tuple[int, int]]) -> None:
    """A 4000x3000 photo to be shown rotated (EXIF orientation 6): libjpeg decodes it at 1/2
    (2000x1500, the smallest scale that covers 1024x768), and the result is the old full
    decode, rotated and thumbnailed, in size and content."""
    photo = Image.linear_gradient("L").resize((4000, 3000)).convert("RGB")
    photo.paste((220, 30, 30), (0, 0, 800, 600))  # a red block at the stored top left
    exif = photo.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encoded(photo, "JPEG", quality=90, exif=exif)

    image = decode_image(data, max_pixels=10**8, max_side=1024)
    assert loads == [(2000, 1500)]
    assert image.size == (768, 1024) and image.mode == "RGB"
    assert image.getpixel((700, 50)) == pytest.approx((220, 30, 30), abs=12)  # now top right
    full = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    full.thumbnail((1024, 1024), Image.Resampling.LANCZOS)
    assert full.size == image.size
    difference = ImageChops.difference(full, image)
    assert max(ImageStat.Stat(difference).mean) < 1.5  # in 1/255, over the whole image


@pytest.mark.parametrize(
    ("fmt", "mode", "options", "fits"),
    [
        ("PNG", "RGB", {}, True),  # 4 bytes a pixel
        ("PNG", "L", {}, True),  # 1
        ("PNG", "P", {}, True),  # 1, plus 4 for the RGB copy
        ("PNG", "RGBA", {}, False),  # 4 + 4
        ("WEBP", "RGB", {"lossless": True}, False),  # 4, plus 12 for libwebp and the copy
        ("JPEG", "RGB", {}, True),  # decoded at 1/8
        ("JPEG", "RGB", {"progressive": True}, True),  # + 3 for the coefficients (4:2:0)
        ("JPEG", "RGB", {"progressive": True, "subsampling": 0}, False),  # + 6 (4:4:4)
    ],
)
def test_what_a_decode_costs_decides_whether_it_fits(
    fmt: str, mode: str, options: dict[str, object], fits: bool
) -> None:
    """A budget of 6 bytes a pixel of a 2048x2048 canvas, reduced to 256: what fits."""
    data = encoded(Image.new(mode, (2048, 2048)), fmt, **options)
    budget = DecodeBudget(6 * 2048 * 2048)
    if fits:
        assert decode_image(data, max_pixels=10**7, max_side=256, budget=budget).size == (
            256,
            256,
        )
    else:
        with pytest.raises(InvalidImage, match=r"2048x2048 .*needs about \d+ MiB, more than"):
            decode_image(data, max_pixels=10**7, max_side=256, budget=budget)
    assert budget.held_bytes == 0


def test_without_max_side_nothing_is_resized(loads: list[tuple[int, int]]) -> None:
    data = encoded(Image.new("RGB", (1500, 900), (1, 2, 3)), "JPEG")
    assert decode_image(data, max_pixels=10**7).size == (1500, 900)
    assert loads == [(1500, 900)]
