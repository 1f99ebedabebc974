"""Image bytes in and out: references decoded under a pixel-bomb guard, PNGs encoded
with provenance text."""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping

from PIL import Image, ImageOps, PngImagePlugin

from .errors import InvalidImage

__all__ = ["ACCEPTED_FORMATS", "decode_image", "encode_png"]

# Photographs and the usual web formats; the first frame of an animation.
ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP"})


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode reference bytes to an RGB image, EXIF orientation applied.

    The size is read from the header and checked before any pixel is decoded, so a small
    file that claims a huge canvas (a pixel bomb) is refused without allocating it. Every
    failure to decode is :class:`InvalidImage`.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=sorted(ACCEPTED_FORMATS))
    except Image.UnidentifiedImageError as exc:
        raise InvalidImage(
            f"The data is not an image in {', '.join(sorted(ACCEPTED_FORMATS))}."
        ) from exc
    except Exception as exc:
        raise _unreadable("The image could not be read", exc) from exc
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidImage(
            f"The image is {width}x{height} ({width * height:,} pixels); the limit is "
            f"{max_pixels:,}."
        )
    try:
        image.seek(0)
        image.load()
        oriented = ImageOps.exif_transpose(image)
        return oriented.convert("RGB")
    except Exception as exc:
        raise _unreadable("The image data is truncated or corrupt", exc) from exc


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
    """PNG bytes with ``text`` as tEXt chunks."""
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=compress_level)
    return buffer.getvalue()
