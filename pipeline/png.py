"""A PNG writer for the images the service delivers: a third of Pillow's CPU, for files of
about the same size.

Pillow tries the five PNG row filters on every row and keeps the best (libpng's
heuristic); for a 2048x2048 image that costs more than the compression itself. Here
every row gets the ``Sub`` filter (each byte minus the one a pixel to its left), computed
for the whole image at once with numpy, and zlib compresses the result with run-length
matches only (``Z_RLE``). Measured on one loaded core: the benchmark stand-in's 2048x2048
image in 0.7 s and 7.5 MB against Pillow's 2.3 s and 8.3 MB (level 3); a 720x477
photograph in 0.09 s and 728 KB against 0.33 s and 683 KB, a few percent more bytes, CPU
on a GPU worker being dearer than bytes.
numpy and zlib release the GIL while they work, so encoding threads do not hold up the
GPU thread.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping

import numpy as np
from PIL import Image

__all__ = ["WRITABLE_MODES", "write_png"]

# Pillow mode -> PNG colour type; 8 bits a channel.
_COLOUR_TYPES = {"L": 0, "RGB": 2, "RGBA": 6}
WRITABLE_MODES = frozenset(_COLOUR_TYPES)
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SUB = 1


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _sub_filtered(image: Image.Image) -> bytes:
    """The image's scanlines, each a filter-type byte and its Sub-filtered bytes."""
    channels = len(image.getbands())
    rows = np.asarray(image, dtype=np.uint8).reshape(image.height, image.width * channels)
    filtered = np.empty((image.height, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = _SUB
    filtered[:, 1 : 1 + channels] = rows[:, :channels]
    np.subtract(rows[:, channels:], rows[:, :-channels], out=filtered[:, 1 + channels :])
    return filtered.tobytes()


def write_png(image: Image.Image, *, text: Mapping[str, str], compress_level: int) -> bytes:
    """PNG bytes of an image in one of :data:`WRITABLE_MODES`, with ``text`` as tEXt chunks
    (keys and values Latin-1, as tEXt requires)."""
    if image.mode not in _COLOUR_TYPES:
        raise ValueError(f"cannot write mode {image.mode} (only {sorted(WRITABLE_MODES)})")
    header = struct.pack(
        ">IIBBBBB", image.width, image.height, 8, _COLOUR_TYPES[image.mode], 0, 0, 0
    )
    parts = [_SIGNATURE, _chunk(b"IHDR", header)]
    for key, value in text.items():
        parts.append(_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")))
    # Run-length matches only: filtered photographs gain little from distant matches, and
    # looking for them is most of zlib's time.
    deflate = zlib.compressobj(compress_level, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
    idat = deflate.compress(_sub_filtered(image)) + deflate.flush()
    parts.append(_chunk(b"IDAT", idat))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)
