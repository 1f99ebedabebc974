"""Per-image seeds derived from one request seed."""

from __future__ import annotations

import hashlib

__all__ = ["MAX_SEED", "derive_seed"]

MAX_SEED = 2**31 - 1


def derive_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` of a request whose seed is ``seed``.

    Image 0 uses the request seed itself, so a one-image request reproduces with the seed
    the API reports; later images hash (seed, index), so the one recorded seed reproduces
    every image of the request, and the images differ from one another.
    """
    if index == 0:
        return seed
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & MAX_SEED
