"""Resolution buckets: the ~1 MP shapes SDXL was trained on, scaled per model."""

from __future__ import annotations

import math

from .geometry import Size

__all__ = ["bucket_for"]


def bucket_for(width: int, height: int, *, base: int, multiple: int) -> Size:
    """The bucket (about ``base * base`` pixels, both sides multiples of ``multiple``)
    closest in aspect ratio to ``width x height``.

    Images are generated at the bucket and resized to the requested size afterwards, so
    requests of many sizes share a few shapes, which is what lets them share GPU batches.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive; got {width}x{height}.")
    aspect = width / height
    area = base * base
    best: Size | None = None
    best_error = math.inf
    # Walk candidate widths; for each take the height that keeps the area nearest `area`.
    for w in range(multiple, base * 16 + 1, multiple):
        h = max(multiple, round(area / w / multiple) * multiple)
        error = abs(math.log((w / h) / aspect))
        if error < best_error - 1e-12:
            best, best_error = Size(width=w, height=h), error
    assert best is not None
    return best
