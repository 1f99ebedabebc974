"""Sequential frames: one prompt per frame, shared self-attention, never split apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import GenerationRequest, ImageGenerator, PipelineError
from pipeline.consistency import ConsistentSelfAttention
from pipeline.generator import split_point
from pipeline.sdxl import Sample, frame_groups

from .conftest import request

SIZE = 64
STAGES = "Series of the same person at three life stages: child, adult, elderly."


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def story(**changes) -> GenerationRequest:
    base = dict(prompt=STAGES, width=SIZE, height=SIZE, seeds=(11, 12, 13), sequential=True)
    return request(**{**base, **changes})


def test_frames_get_their_items_in_order(tiny: ImageGenerator) -> None:
    frames = tiny.samples(story(), group=5)
    assert [f.prompt for f in frames] == [
        f"Series of the same person at three life stages, {stage}"
        for stage in ("child", "adult", "elderly")
    ]
    assert [f.seed for f in frames] == [11, 12, 13]
    assert {f.group for f in frames} == {5}
    # Not sequential: no group, the whole prompt for every image.
    plain = tiny.samples(story(sequential=False))
    assert {s.group for s in plain} == {None} and {s.prompt for s in plain} == {STAGES}


def test_frame_groups() -> None:
    samples = [Sample("a", 1, 7.5, group=0), Sample("b", 2, 7.5), Sample("c", 3, 7.5, group=0)]
    samples.append(Sample("d", 4, 7.5, group=1))  # a one-frame series shares nothing
    (group,) = frame_groups(samples)
    assert group.samples == (0, 2) and group.seed == 1


def test_frames_share_attention(tiny: ImageGenerator, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = ConsistentSelfAttention._shared

    def spy(self, attn, hidden_states, state, group):
        calls.append(hidden_states.shape[0])
        return original(self, attn, hidden_states, state, group)

    monkeypatch.setattr(ConsistentSelfAttention, "_shared", spy)
    together = [pixels(image) for image in tiny.generate(story())]
    assert calls and set(calls) == {3}
    independent = tiny.generate_batch(
        [story(prompt=f.prompt, seeds=(f.seed,), sequential=False) for f in tiny.samples(story())]
    )
    for frame, alone in zip(together, independent, strict=True):
        assert np.abs(frame - pixels(alone[0])).mean() > 0.1
    # Reproducible.
    again = [pixels(image) for image in tiny.generate(story())]
    assert all(np.array_equal(a, b) for a, b in zip(together, again, strict=True))


def test_frames_and_neighbours_do_not_depend_on_the_batch(tiny: ImageGenerator) -> None:
    frames = [pixels(image) for image in tiny.generate(story())]
    other = request(prompt="a red fox", width=SIZE, height=SIZE, seeds=(3,))
    other_story = story(prompt="A comic: a cat, a dog and a bird", seeds=(21, 22, 23))
    (alone,) = tiny.generate(other)
    outcomes = tiny.generate_batch([other, story(), other_story])
    assert np.abs(pixels(outcomes[0][0]) - pixels(alone)).max() <= 1
    for mixed, frame in zip(outcomes[1], frames, strict=True):
        assert np.abs(pixels(mixed) - frame).max() <= 1
    story_alone = tiny.generate(other_story)
    for mixed, frame in zip(outcomes[2], story_alone, strict=True):
        assert np.abs(pixels(mixed) - pixels(frame)).max() <= 1


def test_split_point_keeps_groups() -> None:
    def batch(*groups: int | None) -> list[Sample]:
        return [Sample("p", i, 7.5, group=g) for i, g in enumerate(groups)]

    assert split_point(batch(None, None, None, None)) == 2
    assert split_point(batch(0, 0, 0, None, 1, 1)) == 3
    assert split_point(batch(0, 0, 0, 0, 0, None)) == 5
    assert split_point(batch(0, 1, 0)) is None
    assert split_point(batch(0, 0, 0)) is None
    assert split_point(batch(None)) is None


def test_out_of_memory_split_never_separates_frames(tiny: ImageGenerator, monkeypatch) -> None:
    """CUDA's out-of-memory cannot happen on the CPU: the pipeline raises it itself for
    calls of more than three samples."""
    calls: list[list[int | None]] = []
    real = tiny.pipeline.latents

    def small_gpu(samples, **size):
        if len(samples) > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        calls.append([s.group for s in samples])
        return real(samples, **size)

    monkeypatch.setattr(tiny.pipeline, "latents", small_gpu)
    jobs = [
        request(width=SIZE, height=SIZE, seeds=(1,)),
        story(),
        request(width=SIZE, height=SIZE, seeds=(2, 3)),
        story(seeds=(4, 5)),
    ]
    outcomes = tiny.generate_batch(jobs)
    assert [len(images) for images in outcomes] == [1, 3, 2, 2]
    seen: dict[int, int] = {}
    for groups in calls:
        for group in {g for g in groups if g is not None}:
            assert group not in seen, calls  # each group in exactly one call
            seen[group] = groups.count(group)
    assert seen == {1: 3, 3: 2}

    (too_big,) = tiny.generate_batch([story(seeds=(1, 2, 3, 4))])
    assert isinstance(too_big, PipelineError) and "do not fit" in str(too_big)

    # The frames come back in order, as the story alone would have them.
    monkeypatch.undo()
    for framed, alone in zip(outcomes[1], tiny.generate(story()), strict=True):
        assert np.abs(pixels(framed) - pixels(alone)).max() <= 1
