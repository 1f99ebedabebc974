"""Sizes, corners and boxes whose order is in their names (light: no torch).

Plain tuples met here in four orders: pixel sizes as (width, height), as PIL has them;
latents and token grids as (height, width), as tensors have them; SDXL's size ids as
height-first pairs with the crop corner as (top, left); and regions as (top, left, bottom,
right) fractions. These types name their fields, so code reads ``size.width`` and builds
``Size(width=..., height=...)``. They are NamedTuples, so they still unpack and compare as
tuples in their fields' order: a PIL size is a :class:`Size` as it is.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Box", "Offset", "Size"]


class Size(NamedTuple):
    """A width and a height: of an image or a latent in pixels, or of a token grid (columns
    and rows)."""

    width: int
    height: int

    @property
    def area(self) -> int:
        """``width x height``."""
        return self.width * self.height


class Offset(NamedTuple):
    """Where a crop's top-left corner sits in the whole image, in pixels."""

    left: int
    top: int


class Box(NamedTuple):
    """A rectangle of an image as fractions of its height (``top``, ``bottom``) and width
    (``left``, ``right``)."""

    top: float
    left: float
    bottom: float
    right: float
