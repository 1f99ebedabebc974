"""Image bytes in and out: references decoded within a memory budget and reduced as they
load, PNGs encoded with provenance text.

A reference costs memory in proportion to its canvas, not its file: a 190 KB PNG of
7000x7000 decodes to 196 MB. So :func:`decode_image` reads the canvas size from the header
and refuses a pixel bomb before anything is allocated, has a JPEG decoded at the smallest
DCT scale that still covers the target size, prices what the rest of the decode will hold
(:func:`_decode_bytes`), waits for that much room in the process's :class:`DecodeBudget`,
and gives it back once the image is reduced to the target size.
"""

from __future__ import annotations

import io
import threading
import traceback
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from PIL import Image, ImageOps, JpegImagePlugin, PngImagePlugin

from .errors import InvalidImage
from .png import WRITABLE_MODES, write_png

__all__ = ["ACCEPTED_FORMATS", "DecodeBudget", "decode_image", "encode_png"]

# Photographs and the usual web formats; the first frame of an animation.
ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP"})

# Modes that are resampled as they are. A palette cannot be resampled, and alpha is dropped
# as the RGB conversion always did, so every other mode becomes RGB at full size first.
_RESAMPLED_AS_IS = frozenset({"RGB", "L"})
# libwebp decodes into a canvas of its own and keeps the previous one, and Pillow copies
# the frame out as bytes: three 4-byte buffers besides the raster (measured: one
# 7000x7000 WebP peaks at 4.0 rasters, see benchmarks/references.py).
_WEBP_BUFFER_BYTES = 12
# Pillow's first resampling step reduces by a whole factor as long as the rest is at least
# this many times the target (Image.thumbnail's default: close to fair resampling).
_REDUCING_GAP = 2.0
_MIB = 1024 * 1024


class DecodeBudget:
    """Bytes of decoded images that the threads of one process may hold at once.

    :func:`decode_image` holds its estimated cost from just before the pixels are decoded
    until they are reduced, and waits while that would pass the limit. A waiting decode
    does not hold back a smaller one that fits: one tenant's huge references queue behind
    each other, not in front of everyone else's (under steady load a large one may wait
    longer; the job's deadline bounds that).
    """

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes < 1:
            raise ValueError("A decode budget needs at least one byte.")
        self.limit_bytes = limit_bytes
        self._held = 0
        self._changed = threading.Condition()

    @property
    def held_bytes(self) -> int:
        """Bytes held now."""
        return self._held

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        """Wait until ``nbytes`` more fit, and hold them for the ``with`` block."""
        if not 0 <= nbytes <= self.limit_bytes:
            raise ValueError(f"{nbytes} bytes can never fit a budget of {self.limit_bytes}.")
        with self._changed:
            self._changed.wait_for(lambda: self._held + nbytes <= self.limit_bytes)
            self._held += nbytes
        try:
            yield
        finally:
            with self._changed:
                self._held -= nbytes
                self._changed.notify_all()


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    max_side: int | None = None,
    budget: DecodeBudget | None = None,
) -> Image.Image:
    """Decode reference bytes to an RGB image, EXIF orientation applied, its longer side
    reduced to ``max_side`` when it is longer.

    The canvas size is read from the header and checked against ``max_pixels`` before any
    pixel is decoded. A JPEG is decoded at the smallest DCT scale (1/8 to 1) that covers
    the target; other formats decode whole and are reduced at once, before the rotation
    and the RGB conversion, so no full-size copy is made that is not needed. With a
    ``budget``, the decode waits for room for its cost and holds it until the image is
    reduced; an image that would need more than the whole budget is refused. Every failure
    is :class:`InvalidImage`.
    """
    image = _open(data)
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidImage(
            f"The image is {width}x{height} ({width * height:,} pixels); the limit is "
            f"{max_pixels:,}."
        )
    try:
        target = _fitted(image.size, max_side)
        box = _draft(image, target)
        cost = _decode_bytes(image, width * height, target)
    except Exception as exc:
        raise _unreadable("The image could not be read", exc) from exc
    if budget is None:
        return _reduced(image, target, box)
    if cost > budget.limit_bytes:
        raise InvalidImage(
            f"The image is {width}x{height} ({image.format}, {image.mode}): decoding it "
            f"needs about {cost / _MIB:,.0f} MiB, more than the {budget.limit_bytes / _MIB:,.0f}"
            " MiB allowed. Send a smaller image."
        )
    with budget.hold(cost):
        return _reduced(image, target, box)


def _open(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=sorted(ACCEPTED_FORMATS))
            image.seek(0)
    except Image.UnidentifiedImageError as exc:
        raise InvalidImage(
            f"The data is not an image in {', '.join(sorted(ACCEPTED_FORMATS))}."
        ) from exc
    except Exception as exc:
        raise _unreadable("The image could not be read", exc) from exc
    return image


def _fitted(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """``size`` scaled so its longer side is ``max_side`` (the aspect ratio kept), or as
    it is when it already fits. The box is square, so the EXIF rotation does not change
    the answer."""
    width, height = size
    if max_side is None or max(width, height) <= max_side:
        return size
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _draft(image: Image.Image, target: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """Have a JPEG decode at the smallest scale that still covers ``target``; the region
    of the drafted image that holds the canvas (None for other formats)."""
    if image.size == target:
        return None
    drafted = image.draft(None, target)
    return drafted[1] if drafted else None


def _decode_bytes(image: Image.Image, canvas_pixels: int, target: tuple[int, int]) -> int:
    """What decoding ``image`` (drafted) holds at once, in bytes: its raster, an RGB copy
    when its mode is converted first, the resize's intermediate images, and the decoder's
    own buffers."""
    pixels = image.width * image.height
    per_pixel = _raster_bytes(image.mode)
    if image.mode not in _RESAMPLED_AS_IS:
        per_pixel += _raster_bytes("RGB")
    cost = pixels * per_pixel + _resize_bytes(image.size, target)
    if image.format == "WEBP":
        cost += _WEBP_BUFFER_BYTES * pixels
    elif isinstance(image, JpegImagePlugin.JpegImageFile) and image.info.get("progressive"):
        cost += _coefficient_bytes(image, canvas_pixels)
    return cost


def _resize_bytes(size: tuple[int, int], target: tuple[int, int]) -> int:
    """The images Pillow's resize holds besides its source: with a reducing gap it first
    reduces by a whole factor per axis, then resamples horizontally into a second image,
    then vertically into the result (which outlives the decode)."""
    if size == target:
        return 0
    (width, height), (target_width, target_height) = size, target
    factor_x = int(width / target_width / _REDUCING_GAP) or 1
    factor_y = int(height / target_height / _REDUCING_GAP) or 1
    reduced_width, reduced_height = -(-width // factor_x), -(-height // factor_y)
    reduced = reduced_width * reduced_height if factor_x * factor_y > 1 else 0
    return _raster_bytes("RGB") * (reduced + target_width * reduced_height)


def _raster_bytes(mode: str) -> int:
    """Bytes a pixel of a Pillow image in ``mode`` takes: one for bilevel, grey and palette
    images, two for 16-bit grey, four for the rest (RGB is stored as RGBX)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def _coefficient_bytes(image: JpegImagePlugin.JpegImageFile, canvas_pixels: int) -> int:
    """libjpeg keeps every DCT coefficient of a progressive JPEG (two bytes each) until its
    last scan, at full size whatever the scale it decodes at: 3 bytes a pixel at 4:2:0,
    6 at 4:4:4."""
    sampling = [(h, v) for _, h, v, _ in image.layer]
    h_max = max(h for h, _ in sampling)
    v_max = max(v for _, v in sampling)
    samples_per_pixel = sum(h * v for h, v in sampling) / (h_max * v_max)
    return round(2 * samples_per_pixel * canvas_pixels)


def _reduced(
    image: Image.Image, target: tuple[int, int], box: tuple[float, float, float, float] | None
) -> Image.Image:
    """The decoded image at ``target`` size, oriented, in RGB: always a new image. The
    source's raster is freed before this returns, also on failure, so that a failed decode
    does not keep it alive in a traceback after its budget is given back."""
    try:
        return _load_and_reduce(image, target, box)
    except Exception as exc:
        traceback.clear_frames(exc.__traceback__)
        raise _unreadable("The image data is truncated or corrupt", exc) from exc
    finally:
        image.close()


def _load_and_reduce(
    image: Image.Image, target: tuple[int, int], box: tuple[float, float, float, float] | None
) -> Image.Image:
    image.load()
    if image.mode not in _RESAMPLED_AS_IS:
        image = image.convert("RGB")
    if image.size != target:
        image = image.resize(target, Image.Resampling.LANCZOS, box=box, reducing_gap=_REDUCING_GAP)
    image = ImageOps.exif_transpose(image)  # a new image, rotated or not
    return image if image.mode == "RGB" else image.convert("RGB")


def _unreadable(what: str, exc: Exception) -> InvalidImage:
    """Whatever Pillow raises while it reads untrusted bytes is the bytes' fault.

    Its format plugins raise many types for malformed data (ValueError for a zTXt, iTXt or
    iCCP chunk that inflates past ``PngImagePlugin.MAX_TEXT_CHUNK``, SyntaxError,
    struct.error, EOFError, IndexError, OSError, DecompressionBomb*, MemoryError, ...); one
    that escaped would leave the job that sent the bytes stranded, so each is the client's
    invalid image.
    """
    return InvalidImage(f"{what} ({type(exc).__name__}: {exc}).")


def encode_png(image: Image.Image, *, text: Mapping[str, str], compress_level: int = 6) -> bytes:
    """PNG bytes with ``text`` as tEXt chunks: written by :func:`.png.write_png` (a third
    of Pillow's CPU) for 8-bit greyscale, RGB and RGBA images with Latin-1 text, by Pillow
    otherwise."""
    if image.mode in WRITABLE_MODES and all(_latin1(item) for item in text.items()):
        return write_png(image, text=text, compress_level=compress_level)
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=compress_level)
    return buffer.getvalue()


def _latin1(item: tuple[str, str]) -> bool:
    try:
        item[0].encode("latin-1"), item[1].encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True
