"""Reference decoding against hostile bytes: every failure is InvalidImage."""

from __future__ import annotations

import pytest

from pipeline import InvalidImage, decode_image
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
