"""The visible platform mark, drawn in the bottom-right corner."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

__all__ = ["MARK", "add_watermark"]

MARK = "xSD"


def add_watermark(image: Image.Image) -> Image.Image:
    """A copy of ``image`` with the mark on a translucent box in the bottom-right corner,
    sized to about 3% of the shorter side."""
    base = image.convert("RGBA")
    short = min(base.size)
    font = ImageFont.load_default(size=max(10, short * 3 // 100))
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    left, top, right, bottom = draw.textbbox((0, 0), MARK, font=font)
    pad = max(2, (bottom - top) // 3)
    margin = max(4, short // 80)
    box_w, box_h = right - left + 2 * pad, bottom - top + 2 * pad
    x0, y0 = base.width - margin - box_w, base.height - margin - box_h
    draw.rectangle((x0, y0, x0 + box_w, y0 + box_h), fill=(0, 0, 0, 110))
    draw.text((x0 + pad - left, y0 + pad - top), MARK, font=font, fill=(255, 255, 255, 220))
    return Image.alpha_composite(base, overlay).convert("RGB")
