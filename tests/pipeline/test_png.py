"""The service's PNG writer: what it writes decodes, pixel for pixel, with its text."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline import encode_png
from pipeline.geometry import Size
from pipeline.png import write_png
from pipeline.stand_in import noise_image

TEXT = {"Software": "xSD worker pool", "xsd:requestId": "req_1", "xsd:model": "xSD4.5"}


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_written_images_decode_to_the_same_pixels_and_text(mode: str) -> None:
    # An odd width: the Sub filter's first pixel and row ends are where it could slip.
    image = noise_image(Size(301, 157), seed=3).convert(mode)
    back = decoded(write_png(image, text=TEXT, compress_level=3))
    assert back.format == "PNG" and back.mode == mode and back.size == image.size
    assert np.array_equal(np.asarray(back), np.asarray(image))
    assert back.text == TEXT


def test_the_compress_level_is_applied() -> None:
    image = noise_image(Size(256, 256), seed=1)
    stored = write_png(image, text={}, compress_level=0)
    packed = write_png(image, text={}, compress_level=9)
    assert len(packed) < len(stored)
    assert np.array_equal(np.asarray(decoded(stored)), np.asarray(decoded(packed)))


def test_other_modes_and_text_go_through_pillow() -> None:
    palette = noise_image(Size(64, 64), seed=2).convert("P")
    back = decoded(encode_png(palette, text={}))
    assert back.mode == "P" and np.array_equal(np.asarray(back), np.asarray(palette))
    with pytest.raises(ValueError, match="cannot write mode P"):
        write_png(palette, text={}, compress_level=3)
    # tEXt holds Latin-1 only: anything else is written by Pillow (as iTXt).
    rgb = noise_image(Size(64, 64), seed=2)
    assert decoded(encode_png(rgb, text={"Title": "灯台"})).text == {"Title": "灯台"}
