"""Fair share between accounts, counted on real Redis: the order in which workers take the
jobs of a GPU queue, weights, caps on images in flight, and the in-flight counts through
every way a job leaves processing. Batches are simulated with picks of 8; no wall time."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.errors import InvalidRequest
from scheduler.jobs.records import JobRecord
from scheduler.jobs.states import JobErrorCode, JobStatus
from scheduler.jobs.store import JobStore
from scheduler.redis import keys
from scheduler.runtime import Runtime
from scheduler.stages.claiming import claim_all
from scheduler.stages.lifecycle import Job, delete_job
from scheduler.stages.reaper import tick

from .factories import accept as store
from .factories import funded_runtime, job_record, route

BATCH = 8
LEASE_MS = 60_000


@pytest.fixture
def runtime(redis_url: str, tmp_path: Path) -> Runtime:
    rt = funded_runtime(redis_url, tmp_path, credits=100_000)
    rt.accounts.ensure("bravo")
    rt.accounts.add_credits("bravo", 100_000)
    return rt


def queue_jobs(rt: Runtime, account: str, count: int, *, images: int = 1) -> list[str]:
    """``count`` prepared jobs of ``account`` waiting in the 2K queue, in this order."""
    ids = []
    for _ in range(count):
        record = job_record(account=account, image_count=images, created_ms=rt.jobs.now_ms())
        store(rt.jobs, record, deadline_ms=record.created_ms + 600_000)
        route(rt.jobs, record)
        ids.append(record.id)
    return ids


def pick(rt: Runtime, queue: str = "gpu.xsd45.2k", wanted: int = BATCH) -> list[str]:
    return [job_id for job_id, _ in rt.jobs.pick(queue, wanted, lease_ms=LEASE_MS)]


def record(rt: Runtime, job_id: str) -> JobRecord:
    found = rt.jobs.get(job_id)
    assert found is not None
    return found


def in_flight(rt: Runtime, account: str) -> int:
    return int(rt.redis.hget(keys.INFLIGHT, f"acct:{account}") or 0)


def test_a_light_account_is_not_stuck_behind_a_flood(runtime: Runtime) -> None:
    flood = queue_jobs(runtime, "acme", 200)
    first = pick(runtime) + pick(runtime)
    assert first == flood[:16], "alone, an account's jobs go in order"
    light = set(queue_jobs(runtime, "bravo", 10))
    batches = [pick(runtime) for _ in range(4)]
    # Round robin between the two accounts: bravo's ten jobs go within 3 batches of 8 (on
    # arrival order they would wait for the 184 images ahead of them, 23 batches).
    assert light <= {job_id for batch in batches[:3] for job_id in batch}
    assert all(len(batch) == BATCH for batch in batches), "no pick is left short"
    assert sum(job_id in light for job_id in batches[0]) >= 3


def test_fairness_counts_images_not_jobs(runtime: Runtime) -> None:
    big = queue_jobs(runtime, "acme", 25, images=8)
    small = set(queue_jobs(runtime, "bravo", 10))
    taken = [job_id for _ in range(3) for job_id in pick(runtime)]
    # One 8-image acme job weighs as much as eight single-image bravo jobs.
    assert small <= set(taken[:12])
    assert sum(job_id in big for job_id in taken[:12]) <= 2


def test_a_weight_of_two_gets_twice_the_share(runtime: Runtime) -> None:
    runtime.accounts.set_share("acme", weight=2)
    heavy = set(queue_jobs(runtime, "acme", 100))
    queue_jobs(runtime, "bravo", 100)
    taken = [job_id for _ in range(6) for job_id in pick(runtime)]
    share = sum(job_id in heavy for job_id in taken) / len(taken)
    assert 0.6 <= share <= 0.72, share


def test_a_cap_holds_jobs_back_without_refusing_them(runtime: Runtime) -> None:
    runtime.accounts.set_share("acme", max_inflight_images=3)
    capped = queue_jobs(runtime, "acme", 6)
    others = queue_jobs(runtime, "bravo", 10)
    first = pick(runtime)
    assert sorted(first) == sorted(capped[:3] + others[:5])
    assert in_flight(runtime, "acme") == 3
    second = pick(runtime)
    assert set(second) == set(others[5:]), "acme waits at its cap while others go"
    assert pick(runtime) == [], "acme's jobs stay queued"
    assert all(record(runtime, job_id).status is JobStatus.QUEUED for job_id in capped[3:])
    # One acme job ends: room for one image, and its end says the queue may take one more.
    done = record(runtime, capped[0])
    finish = Job.claimed(runtime, done, done.attempt).succeed([])
    assert finish.ok and finish.freed_capped == 1
    assert runtime.redis.llen("gpu.xsd45.2k") == 1, "a message for the room it freed"
    assert not Job.as_read(runtime, record(runtime, others[0])).cancel().freed_capped
    assert pick(runtime) == [capped[3]]
    assert in_flight(runtime, "acme") == 3


def test_a_job_bigger_than_its_cap_runs_alone(runtime: Runtime) -> None:
    runtime.accounts.set_share("acme", max_inflight_images=2)
    big, small = queue_jobs(runtime, "acme", 1, images=4) + queue_jobs(runtime, "acme", 1)
    assert pick(runtime) == [big]
    assert pick(runtime) == []
    done = record(runtime, big)
    Job.claimed(runtime, done, done.attempt).fail(JobErrorCode.PROVIDER_ERROR, "boom")
    assert pick(runtime) == [small]


def test_in_flight_counts_survive_a_dead_worker_and_a_late_finish(runtime: Runtime) -> None:
    (job_id,) = queue_jobs(runtime, "acme", 1, images=2)
    runtime.jobs.pick("gpu.xsd45.2k", 1, lease_ms=1)  # a worker that dies right away
    later = queue_jobs(runtime, "bravo", 1)
    assert in_flight(runtime, "acme") == 2
    dead = record(runtime, job_id)
    assert tick(runtime)["redispatched"] == 1
    # Back at the front of the queue, ahead of the job that waited meanwhile.
    assert runtime.jobs.queue_place(job_id, "gpu.xsd45.2k").position == 1  # type: ignore[union-attr]
    assert pick(runtime, wanted=1) == [job_id]
    assert record(runtime, job_id).attempt == 2 and in_flight(runtime, "acme") == 2
    # The dead worker's late report changes nothing; the live worker's counts once.
    assert not Job.claimed(runtime, dead, dead.attempt).succeed([]).ok
    assert in_flight(runtime, "acme") == 2
    assert Job.claimed(runtime, dead, 2).succeed([]).ok
    assert in_flight(runtime, "acme") == 0
    assert runtime.redis.hget(keys.INFLIGHT, "queue:gpu.xsd45.2k") is None
    assert pick(runtime) == later


def test_cancel_and_delete_free_places_and_in_flight_images(runtime: Runtime) -> None:
    first, second, third = queue_jobs(runtime, "acme", 3, images=2)
    place = runtime.jobs.queue_place(third, "gpu.xsd45.2k")
    assert place is not None and place.position == 3
    assert Job.as_read(runtime, record(runtime, first)).cancel().ok
    assert runtime.jobs.queue_place(first, "gpu.xsd45.2k") is None
    assert runtime.jobs.queue_place(third, "gpu.xsd45.2k").position == 2  # type: ignore[union-attr]
    assert pick(runtime, wanted=1) == [second]
    assert in_flight(runtime, "acme") == 2
    runtime.accounts.set_share("acme", max_inflight_images=4)
    delete_job(runtime, record(runtime, second))  # deleted while it runs
    assert in_flight(runtime, "acme") == 0
    assert runtime.redis.llen("gpu.xsd45.2k") == 2, "a message per image it freed"
    assert Job.as_read(runtime, record(runtime, third)).cancel().ok
    assert pick(runtime) == []


def test_a_message_redelivered_after_its_job_finished_does_nothing(runtime: Runtime) -> None:
    (job_id,) = queue_jobs(runtime, "acme", 1)
    claimed: list = []
    claim_all(runtime, _NoLeases(), [job_id], claimed)
    assert [c.record.id for c in claimed] == [job_id]
    Job.claimed(runtime, claimed[0].record, 1).succeed([])
    again: list = []
    claim_all(runtime, _NoLeases(), [job_id, job_id], again)
    assert again == []
    done = record(runtime, job_id)
    assert done.status is JobStatus.SUCCEEDED and done.attempt == 1
    assert in_flight(runtime, "acme") == 0


def test_a_job_sent_twice_runs_once(runtime: Runtime) -> None:
    (job_id,) = queue_jobs(runtime, "acme", 1)
    claimed: list = []
    claim_all(runtime, _NoLeases(), [job_id, job_id], claimed)
    assert [c.record.id for c in claimed] == [job_id]


def test_estimated_start_follows_the_queue_rate(runtime: Runtime) -> None:
    now = [1_800_000_000.0]
    jobs = JobStore(runtime.redis, clock=lambda: now[0])
    ids = queue_jobs(runtime, "acme", 40)
    assert jobs.queue_place(ids[-1], "gpu.xsd45.2k").start_ms is None  # type: ignore[union-attr]
    for _ in range(3):  # 8 jobs every 5 s
        jobs.pick("gpu.xsd45.2k", BATCH, lease_ms=LEASE_MS)
        now[0] += 5
    place = jobs.queue_place(ids[-1], "gpu.xsd45.2k")
    assert place is not None and place.position == 16
    # 1.6 jobs a second: the 16th job starts in about 10 s.
    assert place.start_ms == pytest.approx(jobs.now_ms() + 10_000, abs=1_000)


def test_shares_are_checked_and_labelled(runtime: Runtime) -> None:
    assert runtime.accounts.share("acme").label == "default"
    with pytest.raises(InvalidRequest, match="weight"):
        runtime.accounts.set_share("acme", weight=0)
    with pytest.raises(InvalidRequest, match="cap"):
        runtime.accounts.set_share("acme", max_inflight_images=-1)
    assert runtime.accounts.set_share("acme", weight=3).label == "weighted"
    assert runtime.accounts.set_share("acme", max_inflight_images=16).label == "capped"
    share = runtime.accounts.set_share("acme", max_inflight_images=0)
    assert share.max_inflight_images is None and share.weight == 3


class _NoLeases:
    """Stands in for the lease keeper, whose background thread these tests do not need."""

    def hold(self, job_id: str, attempt: int) -> None: ...

    def release(self, job_id: str) -> None: ...
