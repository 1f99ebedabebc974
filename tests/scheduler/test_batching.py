"""Batch planning by bucket and pixel budget."""

from __future__ import annotations

from scheduler.stages.batching import plan_batches

MP = 1024 * 1024


def plan(jobs, budget=8 * MP):
    return plan_batches(
        jobs, bucket_of=lambda j: j[1], images_of=lambda j: j[2], pixel_budget=budget
    )


def test_buckets_never_mix_and_order_is_kept() -> None:
    square, wide = (1024, 1024), (1344, 768)
    jobs = [("a", square, 1), ("b", wide, 1), ("c", square, 2), ("d", wide, 1)]
    assert [[j[0] for j in p] for p in plan(jobs)] == [["a", "c"], ["b", "d"]]


def test_budget_counts_every_image() -> None:
    square = (1024, 1024)
    jobs = [("a", square, 4), ("b", square, 3), ("c", square, 2), ("d", square, 1)]
    assert [[j[0] for j in p] for p in plan(jobs)] == [["a", "b"], ["c", "d"]]


def test_oversized_job_runs_alone() -> None:
    square = (1024, 1024)
    jobs = [("a", square, 1), ("big", square, 15), ("c", square, 1)]
    assert [[j[0] for j in p] for p in plan(jobs)] == [["a"], ["big"], ["c"]]


def test_empty() -> None:
    assert plan([]) == []
