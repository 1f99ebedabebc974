"""Batch planning: which claimed jobs share a forward pass.

Jobs of one resolution bucket share a pass (a pass never mixes buckets), in arrival order,
until the per-GPU pixel budget is spent: every image of every job counts, at its bucket's
size. A job larger than the budget on its own still runs, alone (the pipeline splits its
images further if the GPU runs out of memory).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["plan_batches"]

T = TypeVar("T")


def plan_batches(
    jobs: Sequence[T],
    *,
    bucket_of: Callable[[T], tuple[int, int]],
    images_of: Callable[[T], int],
    pixel_budget: int,
) -> list[list[T]]:
    """Passes of jobs, each of one bucket and within the budget, in arrival order of
    their first job."""
    open_passes: dict[tuple[int, int], tuple[list[T], int]] = {}
    passes: list[list[T]] = []
    for job in jobs:
        bucket = bucket_of(job)
        cost = images_of(job) * bucket[0] * bucket[1]
        current = open_passes.get(bucket)
        if current is None or current[1] + cost > pixel_budget:
            members: list[T] = []
            passes.append(members)
            current = (members, 0)
        current[0].append(job)
        open_passes[bucket] = (current[0], current[1] + cost)
    return passes
