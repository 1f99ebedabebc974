"""The C allocator of a process whose threads decode large images.

glibc serves an allocation of 128 KiB or more with its own ``mmap``, returned to the system
when freed, but each such free raises that threshold to the freed size (up to 32 MiB). After
the first decoded image is freed, rasters, libjpeg's coefficient arrays and libwebp's
canvases come from per-thread arenas instead, and an arena keeps what it frees for its own
thread: with 32 threads decoding in turn under a 256 MiB decode budget, the CPU worker's
RSS still reached 3 GiB (``python -m benchmarks.references``, png-7000). Fixing the
threshold keeps large blocks on ``mmap``, so the budget bounds the RSS.
"""

from __future__ import annotations

import ctypes
import logging

__all__ = ["MMAP_THRESHOLD_BYTES", "return_large_frees"]

log = logging.getLogger(__name__)

# glibc's initial threshold; mallopt() setting it also turns off its dynamic raising.
MMAP_THRESHOLD_BYTES = 128 * 1024
_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h


def return_large_frees() -> bool:
    """Keep large allocations on ``mmap`` for the life of the process; whether it took
    effect (glibc only: elsewhere there is no such threshold to fix)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    if not applied:
        log.info("mallopt(M_MMAP_THRESHOLD) is not available; decoding may keep freed memory.")
    return applied
