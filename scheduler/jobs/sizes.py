"""Output sizes: presets, explicit ``WxH`` values and the spec's bounds.

``size`` is either a preset (``2K``, ``4K``) combined with ``aspectRatio``, or explicit
pixels that win over any aspect ratio. ``aspectRatio: auto`` with references picks the
preset shape closest to the first reference's aspect ratio, which is only known once the
reference is fetched: :func:`resolve` is therefore called at POST when it can be, and again
in the prepare stage with the reference's aspect ratio.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "AspectRatio",
    "MIN_PIXELS",
    "MAX_PIXELS",
    "PRESETS",
    "SizeError",
    "Size",
    "parse_size",
    "resolve",
    "largest_pixels",
    "size_class",
]

MIN_PIXELS = 3_600_000
MAX_PIXELS = 16_777_216
MIN_ASPECT = 1 / 16
MAX_ASPECT = 16.0


class AspectRatio(StrEnum):
    """The ``aspectRatio`` selector."""

    AUTO = "auto"
    SQUARE = "square"
    LANDSCAPE = "landscape"
    PORTRAIT = "portrait"


# 16:9 shapes for landscape and portrait; the 4K ones are the largest 16:9-ish sizes with
# both sides multiples of 16 that stay inside MAX_PIXELS.
PRESETS: dict[str, dict[AspectRatio, tuple[int, int]]] = {
    "2K": {
        AspectRatio.SQUARE: (2048, 2048),
        AspectRatio.LANDSCAPE: (2560, 1440),
        AspectRatio.PORTRAIT: (1440, 2560),
    },
    "4K": {
        AspectRatio.SQUARE: (4096, 4096),
        AspectRatio.LANDSCAPE: (5440, 3056),
        AspectRatio.PORTRAIT: (3056, 5440),
    },
}

_EXPLICIT = re.compile(r"^\s*(\d{1,6})\s*[xX]\s*(\d{1,6})\s*$")


class SizeError(ValueError):
    """A ``size`` value outside what the spec accepts; the message says why."""


@dataclass(frozen=True)
class Size:
    """A parsed ``size``: a preset name, or explicit width and height."""

    preset: str | None = None
    width: int | None = None
    height: int | None = None

    @property
    def is_explicit(self) -> bool:
        """True for ``WxH`` values."""
        return self.preset is None


def parse_size(value: str) -> Size:
    """Parse and bound-check a ``size`` string; raise :class:`SizeError` when invalid."""
    text = value.strip().upper()
    if text in PRESETS:
        return Size(preset=text)
    if text == "1K":
        raise SizeError("size '1K' is no longer accepted; use '2K', '4K' or explicit pixels.")
    match = _EXPLICIT.match(text)
    if match is None:
        raise SizeError(
            f"size must be '2K', '4K' or explicit pixels like '2048x2048'; got {value!r}."
        )
    width, height = int(match.group(1)), int(match.group(2))
    if width == 0 or height == 0:
        raise SizeError(f"size {value!r} has a zero side.")
    pixels = width * height
    if not MIN_PIXELS <= pixels <= MAX_PIXELS:
        raise SizeError(
            f"size {width}x{height} has {pixels:,} pixels; the total must be between "
            f"{MIN_PIXELS:,} and {MAX_PIXELS:,}."
        )
    if not MIN_ASPECT <= width / height <= MAX_ASPECT:
        raise SizeError(
            f"size {width}x{height} has aspect ratio {width / height:.4g}; it must be between "
            "1/16 and 16."
        )
    return Size(width=width, height=height)


def resolve(
    size: Size,
    aspect: AspectRatio,
    *,
    has_references: bool = False,
    reference_aspect: float | None = None,
) -> tuple[int, int] | None:
    """Explicit pixels for a parsed size.

    Returns None while an ``auto`` preset with references waits for the first reference's
    aspect ratio; call again with ``reference_aspect`` once it is known. ``auto`` without
    references is square.
    """
    if size.is_explicit:
        assert size.width is not None and size.height is not None
        return size.width, size.height
    assert size.preset is not None
    shapes = PRESETS[size.preset]
    if aspect is not AspectRatio.AUTO:
        return shapes[aspect]
    if not has_references:
        return shapes[AspectRatio.SQUARE]
    if reference_aspect is None:
        return None
    # Compare on a log scale so 2:1 and 1:2 are equally far from square.
    target = math.log(reference_aspect)
    return min(shapes.values(), key=lambda wh: abs(math.log(wh[0] / wh[1]) - target))


def largest_pixels(size: Size) -> int:
    """The most pixels a parsed size can resolve to (a preset's largest shape), for bounds
    that must hold before ``auto`` is resolved."""
    if size.is_explicit:
        assert size.width is not None and size.height is not None
        return size.width * size.height
    assert size.preset is not None
    return max(width * height for width, height in PRESETS[size.preset].values())


def size_class(width: int, height: int) -> str:
    """``2k`` or ``4k``: which GPU queue a job of this size goes to."""
    return "2k" if width * height <= 8_388_608 else "4k"
