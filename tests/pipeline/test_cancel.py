"""Stopping a request mid-batch: its rows leave at the next denoising step, the others go
on exactly as they would have without it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline import ImageGenerator, RequestCancelled

from .conftest import request


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


class UNetCalls:
    """Counts the pipeline's guided UNet evaluations and the rows each one saw."""

    def __init__(self, tiny: ImageGenerator, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows: list[int] = []
        real = tiny.pipeline.predict_noise

        def spy(latents, timestep, cond):
            self.rows.append(latents.shape[0])
            return real(latents, timestep, cond)

        monkeypatch.setattr(tiny.pipeline, "predict_noise", spy)


def test_a_stopped_request_leaves_the_batch_and_the_others_are_unchanged(
    tiny: ImageGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = [
        request(request_id="req_a", seeds=(1,)),
        request(request_id="req_b", seeds=(2, 3), prompt="a red fox"),
        request(request_id="req_c", seeds=(4,), guidance_scale=3.0),
    ]
    alone = {job.request_id: tiny.generate(job) for job in (jobs[0], jobs[2])}
    calls = UNetCalls(tiny, monkeypatch)
    # req_b is stopped after the second denoising step of the bucket pass.
    outcomes = tiny.generate_batch(
        jobs, cancelled=lambda request_id: request_id == "req_b" and len(calls.rows) >= 2
    )
    assert isinstance(outcomes[1], RequestCancelled)
    for outcome, job in [(outcomes[0], jobs[0]), (outcomes[2], jobs[2])]:
        assert not isinstance(outcome, Exception)
        assert np.abs(pixels(outcome[0]) - pixels(alone[job.request_id][0])).max() <= 1
    steps = tiny.spec.steps
    assert calls.rows[:2] == [4, 4], "all four images share the first steps"
    assert calls.rows[2:steps] == [2] * (steps - 2), "req_b's two rows left the batch"
    assert all(rows <= 2 for rows in calls.rows[steps:]), "nor is it refined"


def test_a_request_stopped_while_refined_in_tiles(
    tiny: ImageGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wide 4K strip refines in a few tiles; of six steps the refinement redraws two.
    keep = request(request_id="req_keep", width=4096, height=1280, seeds=(5,), steps=6)
    stop = request(request_id="req_stop", width=4096, height=1280, seeds=(6,), steps=6)
    (alone,) = tiny.generate(keep)
    calls = UNetCalls(tiny, monkeypatch)
    bucket_steps = 6
    # Stopped once refinement has begun: the tiles of later steps carry one row only.
    outcomes = tiny.generate_batch(
        [keep, stop],
        cancelled=lambda request_id: request_id == "req_stop" and len(calls.rows) > bucket_steps,
    )
    assert isinstance(outcomes[1], RequestCancelled)
    assert not isinstance(outcomes[0], Exception)
    assert np.abs(pixels(outcomes[0][0]) - pixels(alone)).max() <= 1
    refine = calls.rows[bucket_steps:]
    assert refine[0] == 2 and refine[-1] == 1


def test_stopping_every_request_ends_the_pass_at_once(
    tiny: ImageGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = UNetCalls(tiny, monkeypatch)
    outcomes = tiny.generate_batch(
        [request(request_id="req_x"), request(request_id="req_y", sequential=True, seeds=(1, 2))],
        cancelled=lambda request_id: True,
    )
    assert all(isinstance(outcome, RequestCancelled) for outcome in outcomes)
    assert calls.rows == []


def test_a_stopped_series_leaves_with_all_its_frames(
    tiny: ImageGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = request(request_id="req_other", seeds=(9,))
    series = request(
        request_id="req_series",
        prompt="the same fox as a cub, an adult, an old fox",
        sequential=True,
        seeds=(1, 2, 3),
    )
    (alone,) = tiny.generate(other)
    calls = UNetCalls(tiny, monkeypatch)
    outcomes = tiny.generate_batch(
        [series, other],
        cancelled=lambda request_id: request_id == "req_series" and len(calls.rows) >= 1,
    )
    assert isinstance(outcomes[0], RequestCancelled)
    assert not isinstance(outcomes[1], Exception)
    assert np.abs(pixels(outcomes[1][0]) - pixels(alone)).max() <= 1
    assert calls.rows[0] == 4 and set(calls.rows[1:]) == {1}
