"""The benchmark stand-in: real-size images, GPU time by pixels, cancellation."""

from __future__ import annotations

import pytest

from pipeline import GenerationRequest, RequestCancelled
from pipeline.stand_in import StandInGenerator


class FakeClock:
    """Time that passes only when the stand-in sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _request(width: int, height: int, seeds: tuple[int, ...] = (1,), **kw) -> GenerationRequest:
    return GenerationRequest(
        request_id=kw.pop("request_id", f"req_{width}x{height}"),
        model="xSD4.5",
        prompt="a lighthouse",
        width=width,
        height=height,
        seeds=seeds,
        guidance_scale=7.5,
        **kw,
    )


def _stand_in(clock: FakeClock, seconds_per_megapixel: float = 0.42) -> StandInGenerator:
    return StandInGenerator("xSD4.5", seconds_per_megapixel, clock=clock, sleep=clock.sleep)


def test_images_have_the_exact_output_sizes_and_differ_by_seed():
    clock = FakeClock()
    outcomes = _stand_in(clock).generate_batch(
        [_request(1000, 600, (1, 2)), _request(2048, 1152, (3,))]
    )
    first, second = outcomes
    assert [image.size for image in first] == [(1000, 600), (1000, 600)]
    assert [image.size for image in second] == [(2048, 1152)]
    assert first[0].mode == "RGB"
    assert first[0].tobytes() != first[1].tobytes()


def test_gpu_time_scales_with_output_pixels():
    times = {}
    for side in (1024, 2048, 4096):
        clock = FakeClock()
        _stand_in(clock).generate_batch([_request(side, side, (1, 2))])
        times[side] = clock.now
        assert len(clock.sleeps) == 30  # SDXL's steps
    assert times[1024] == pytest.approx(2 * 0.42)
    assert times[2048] == pytest.approx(4 * times[1024])
    assert times[4096] == pytest.approx(16 * times[1024])


def test_the_worker_plans_passes_as_for_sdxl():
    stand_in = _stand_in(FakeClock())
    assert stand_in.spec.alias == "xSD4.5"
    assert stand_in.spec.base_resolution == 1024
    assert stand_in.bucket(_request(2048, 2048)).width == 1024


def test_a_cancelled_request_leaves_at_the_next_step_and_stops_costing_time():
    clock = FakeClock()
    stopped = set()
    steps = []

    def on_step(step: int, seconds: float) -> None:
        steps.append(seconds)
        if step == 9:
            stopped.add("req_gone")

    outcomes = _stand_in(clock, 1.0).generate_batch(
        [_request(1024, 1024, request_id="req_gone"), _request(1024, 1024, request_id="req_kept")],
        on_step=on_step,
        cancelled=lambda request_id: request_id in stopped,
    )
    assert isinstance(outcomes[0], RequestCancelled)
    assert len(outcomes[1]) == 1
    # Ten steps of both requests, then twenty of the one left.
    assert clock.now == pytest.approx(10 * 2 / 30 + 20 * 1 / 30)
    assert len(steps) == 30


def test_everything_cancelled_stops_the_batch():
    clock = FakeClock()
    (outcome,) = _stand_in(clock).generate_batch([_request(1024, 1024)], cancelled=lambda _: True)
    assert isinstance(outcome, RequestCancelled)
    assert clock.sleeps == []


def test_a_cost_is_required():
    with pytest.raises(ValueError, match="seconds_per_megapixel"):
        StandInGenerator("xSD4.5", 0)


def test_progress_is_reported_per_request_at_every_step():
    stopped: set[str] = set()
    reports: list[tuple[str, int, int]] = []

    def on_progress(request_id: str, done: int, total: int) -> None:
        reports.append((request_id, done, total))
        if done == 5:
            stopped.add("req_gone")

    _stand_in(FakeClock(), 1.0).generate_batch(
        [_request(1024, 1024, request_id="req_gone"), _request(1024, 1024, request_id="req_kept")],
        cancelled=lambda request_id: request_id in stopped,
        on_progress=on_progress,
    )
    kept = [(done, total) for rid, done, total in reports if rid == "req_kept"]
    assert kept == [(step, 30) for step in range(1, 31)]
    assert [done for rid, done, _ in reports if rid == "req_gone"] == [1, 2, 3, 4, 5]
