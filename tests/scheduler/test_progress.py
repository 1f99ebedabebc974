"""Progress in the record: written under the job's attempt, throttled per pass, shown only
while the job is processing."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from scheduler.jobs.states import JobErrorCode
from scheduler.jobs.store import JobStore
from scheduler.jobs.views import public_view
from scheduler.runtime import Runtime
from scheduler.stages.progress import ProgressWriter

from .factories import accept, funded_runtime, job_record


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def runtime(redis_url: str, tmp_path: Path) -> Runtime:
    return funded_runtime(redis_url, tmp_path, credits=1000)


def view(rt: Runtime, job_id: str) -> dict:
    record = rt.jobs.get(job_id)
    assert record is not None
    return public_view(
        record, store=rt.store, base_url="http://x", ttl_seconds=3600, now_ms=rt.jobs.now_ms()
    )


def queued(rt: Runtime) -> str:
    record = job_record(created_ms=rt.jobs.now_ms())
    accept(rt.jobs, record)
    return record.id


def test_a_processing_job_shows_its_progress(runtime: Runtime) -> None:
    job_id = queued(runtime)
    assert runtime.jobs.record_progress([(job_id, 0, 1, 40)]) == 0, "a queued job has none"
    assert "progress" not in view(runtime, job_id)
    attempt = runtime.jobs.claim(job_id, lease_ms=60_000).attempt
    assert "progress" not in view(runtime, job_id), "unknown until the worker writes it"
    assert runtime.jobs.record_progress([(job_id, attempt, 17, 40)]) == 1
    assert view(runtime, job_id)["progress"] == {
        "fraction": 0.425,
        "stepsDone": 17,
        "stepsTotal": 40,
    }


def test_a_worker_that_lost_the_job_writes_nothing(runtime: Runtime) -> None:
    clock = FakeClock()
    jobs = JobStore(runtime.redis, clock=clock)
    job_id = queued(runtime)
    first = jobs.claim(job_id, lease_ms=1_000).attempt
    assert jobs.record_progress([(job_id, first, 30, 40)]) == 1
    clock.now += 2  # the first worker's lease lapsed: another takes the job over
    second = jobs.claim(job_id, lease_ms=60_000).attempt
    assert second == first + 1
    assert "progress" not in view(runtime, job_id), "the first attempt's is not this one's"
    assert jobs.record_progress([(job_id, first, 35, 40)]) == 0
    assert jobs.record_progress([(job_id, second, 2, 40)]) == 1
    assert view(runtime, job_id)["progress"]["stepsDone"] == 2
    record = jobs.get(job_id)
    assert record is not None
    jobs.fail(record, JobErrorCode.INTERNAL_ERROR, "x", attempt=second, webhook_at_ms=None)
    assert jobs.record_progress([(job_id, second, 3, 40)]) == 0, "terminal: left alone"
    assert "progress" not in view(runtime, job_id)


def test_writes_are_throttled_to_one_per_interval_for_the_whole_pass(runtime: Runtime) -> None:
    clock = FakeClock()
    jobs = [queued(runtime), queued(runtime)]
    attempts = {job_id: runtime.jobs.claim(job_id, lease_ms=60_000).attempt for job_id in jobs}
    calls: list[int] = []
    original = runtime.jobs.record_progress

    def counted(batch):
        calls.append(len(batch))
        return original(batch)

    runtime.jobs.record_progress = counted  # type: ignore[method-assign]
    writer = ProgressWriter(runtime.jobs, attempts, interval=1.0, clock=clock)
    # Forty steps of both jobs, a step every 0.25 s: ten seconds of denoising.
    for step in range(1, 41):
        for job_id in jobs:
            writer.report(job_id, step, 40)
        clock.now += 0.25
    writer.report("req_not_in_this_pass", 1, 2)
    writer.flush()
    # The first report at once, then one round trip per second for both jobs, and the
    # pass's end: 11 writes for 80 reports.
    assert calls == [1] + [2] * 10
    assert writer.writes == 11
    assert view(runtime, jobs[1])["progress"] == {
        "fraction": 1.0,
        "stepsDone": 40,
        "stepsTotal": 40,
    }
    writer.flush()
    assert writer.writes == 11, "nothing new: nothing written"


def test_a_redis_outage_drops_progress_not_the_pass() -> None:
    dead = JobStore(redis.Redis(port=1, socket_connect_timeout=0.2))
    writer = ProgressWriter(dead, {"req_x": 1})
    writer.report("req_x", 1, 4)
    assert writer.writes == 1
