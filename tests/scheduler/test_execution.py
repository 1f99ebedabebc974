"""The GPU stage in process: real Redis, real tiny model, local store."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from scheduler.jobs.records import JobRecord
from scheduler.jobs.states import JobStatus
from scheduler.runtime import Runtime
from scheduler.stages.running import run_batch

from .factories import accept as store
from .factories import funded_runtime, job_record, route


@pytest.fixture
def runtime(redis_url: str, tmp_path: Path) -> Runtime:
    return funded_runtime(redis_url, tmp_path, credits=1000, watch_seconds=0.05)


def accept(
    rt: Runtime,
    index: int,
    *,
    images: int = 1,
    reference_keys: tuple[str, ...] = (),
    size: tuple[int, int] = (2048, 2048),
) -> str:
    record = job_record(
        id=f"req_exec{index:012d}",
        prompt=f"a lighthouse number {index}",
        created_ms=rt.jobs.now_ms(),
        image_count=images,
        seed=index,
        width=size[0],
        height=size[1],
        references=("https://cdn.your-product.com/x.png",) if reference_keys else (),
    )
    store(rt.jobs, record, deadline_ms=record.created_ms + 600_000, purge_ms=10**15)
    if reference_keys:
        route(rt.jobs, record, reference_keys=f'["{reference_keys[0]}"]')
    else:
        route(rt.jobs, record)
    return record.id


def wait_terminal(rt: Runtime, job_ids: list[str], timeout: float = 60) -> dict[str, JobRecord]:
    deadline = time.monotonic() + timeout
    while True:
        records = {i: rt.jobs.get(i) for i in job_ids}
        if all(r is not None and r.status.is_terminal() for r in records.values()):
            return records  # type: ignore[return-value]
        assert time.monotonic() < deadline, {i: r.status for i, r in records.items() if r}
        time.sleep(0.05)


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_batch_records_every_outcome(runtime: Runtime) -> None:
    good = [accept(runtime, 1, images=2), accept(runtime, 2)]
    broken = accept(runtime, 3, reference_keys=("refs/acme/req_exec000000000003/0.png",))
    passes_before = sample("xsd_batch_jobs_count")
    jobs_before = sample("xsd_batch_jobs_sum")
    run_batch(runtime, [*good, broken, good[0]])  # good[0] queued twice: runs once
    records = wait_terminal(runtime, [*good, broken])
    assert [records[i].status for i in good] == [JobStatus.SUCCEEDED] * 2
    assert records[good[0]].attempt == 1 and len(records[good[0]].images) == 2
    assert records[broken].status is JobStatus.FAILED
    assert records[broken].error["code"] == "internal_error"  # type: ignore[index]
    assert runtime.accounts.info("acme")["balance"] == 1000 - 30
    # Both good jobs (three images) shared one forward pass.
    assert sample("xsd_batch_jobs_count") - passes_before == 1
    assert sample("xsd_batch_jobs_sum") - jobs_before == 2
    for job_id in good:
        stored = runtime.store.get(f"images/acme/{job_id}/0.png")
        assert stored.startswith(b"\x89PNG")


def test_where_the_time_goes_is_counted(runtime: Runtime) -> None:
    """A batch's claiming, each image's PNG encoding, each job's hand-over, spool write and
    recorded success are observed by the worker's stage metrics (what the pool benchmark
    reads)."""
    names = (
        "xsd_claim_seconds_count",
        "xsd_upload_backlog_wait_seconds_count",
        "xsd_spool_write_seconds_count",
        "xsd_record_success_seconds_count",
    )
    before = {name: sample(name) for name in names}
    encoded = REGISTRY.get_sample_value("xsd_png_encode_seconds_count", {"size_class": "2k"}) or 0
    jobs = [accept(runtime, 20, images=2), accept(runtime, 21)]
    run_batch(runtime, jobs)
    wait_terminal(runtime, jobs)
    after = {name: sample(name) - before[name] for name in names}
    assert after == {
        "xsd_claim_seconds_count": 1,  # one batch
        "xsd_upload_backlog_wait_seconds_count": 2,  # one hand-over per job
        "xsd_spool_write_seconds_count": 2,
        "xsd_record_success_seconds_count": 2,
    }
    assert (
        REGISTRY.get_sample_value("xsd_png_encode_seconds_count", {"size_class": "2k"}) - encoded
        == 3
    )  # one per image


def test_job_held_by_a_live_worker_is_left_alone(runtime: Runtime) -> None:
    job_id = accept(runtime, 4)
    runtime.jobs.claim(job_id, lease_ms=60_000)  # another worker holds it
    run_batch(runtime, [job_id])
    time.sleep(0.5)
    record = runtime.jobs.get(job_id)
    assert record is not None and record.status is JobStatus.PROCESSING and record.attempt == 1


def test_budget_splits_passes(runtime: Runtime) -> None:
    # The default budget is eight images per pass: 6 + 6 images take two passes.
    jobs = [accept(runtime, 5, images=6), accept(runtime, 6, images=6)]
    before = sample("xsd_batch_jobs_count")
    run_batch(runtime, jobs)
    records = wait_terminal(runtime, jobs)
    assert all(r.status is JobStatus.SUCCEEDED for r in records.values())
    assert sample("xsd_batch_jobs_count") - before == 2


def balance(rt: Runtime) -> int:
    return int(rt.accounts.info("acme")["balance"])


def test_a_model_that_cannot_load_fails_and_refunds_its_jobs(runtime: Runtime, monkeypatch) -> None:
    import scheduler.stages.running as running

    def missing(rt: Runtime, alias: str):
        raise ModuleNotFoundError("No module named 'diffusers'")

    monkeypatch.setattr(running, "generator_for", missing)
    jobs = [accept(runtime, 7), accept(runtime, 8, images=2)]
    run_batch(runtime, jobs)
    records = wait_terminal(runtime, jobs, timeout=5)
    for record in records.values():
        assert record.status is JobStatus.FAILED
        assert record.error["code"] == "provider_error"  # type: ignore[index]
        assert "diffusers" in record.error["message"]  # type: ignore[index]
    assert balance(runtime) == 1000


def test_an_unexpected_exception_while_claiming_fails_what_was_claimed(
    runtime: Runtime, monkeypatch
) -> None:
    import scheduler.stages.claiming as claiming

    def broken(rt: Runtime, record: JobRecord):
        raise KeyError("a bug")

    monkeypatch.setattr(claiming, "_request_for", broken)
    job = accept(runtime, 9)
    run_batch(runtime, [job])
    record = wait_terminal(runtime, [job], timeout=5)[job]
    assert record.status is JobStatus.FAILED and record.error["code"] == "internal_error"  # type: ignore[index]
    assert balance(runtime) == 1000


def test_jobs_picked_but_never_read_are_not_held(runtime: Runtime, monkeypatch) -> None:
    """Redis fails between the pick and the reading of the records: the picked jobs'
    leases are let go (to lapse, so the beat hands them out again), not renewed forever."""
    import scheduler.stages.running as running

    def broken(job_ids):
        raise ConnectionError("Redis went away")

    monkeypatch.setattr(runtime.jobs, "get_many", broken)
    job = accept(runtime, 10)
    run_batch(runtime, [job])
    leases = running._state(runtime).leases
    assert not leases.holds(job)
    assert runtime.jobs.get(job).status is JobStatus.PROCESSING  # its lease will lapse


def test_an_unexpected_exception_while_encoding_fails_the_job(
    runtime: Runtime, monkeypatch
) -> None:
    import scheduler.stages.uploading as uploading

    def broken(record: JobRecord, images):
        raise RuntimeError("the encoder crashed")

    monkeypatch.setattr(uploading, "encode_images", broken)
    job = accept(runtime, 10)
    run_batch(runtime, [job])
    record = wait_terminal(runtime, [job])[job]
    assert record.status is JobStatus.FAILED and record.error["code"] == "internal_error"  # type: ignore[index]
    assert balance(runtime) == 1000


def test_a_job_cancelled_while_it_runs_stops_and_stays_charged(runtime: Runtime) -> None:
    from scheduler.stages.lifecycle import Job

    job = accept(runtime, 11, images=2, size=(4096, 4096))
    generated, stopped = sample("xsd_images_generated_total"), sample("xsd_jobs_stopped_total")

    def cancel_once_running() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            record = runtime.jobs.get(job)
            if record is not None and record.status is JobStatus.PROCESSING:
                Job.as_read(runtime, record).cancel()
                return
            time.sleep(0.01)

    canceller = threading.Thread(target=cancel_once_running)
    canceller.start()
    run_batch(runtime, [job])
    canceller.join()
    assert sample("xsd_jobs_stopped_total") - stopped == 1
    assert sample("xsd_images_generated_total") == generated, "no image was finished"
    record = runtime.jobs.get(job)
    assert record is not None and record.status is JobStatus.FAILED
    assert balance(runtime) == 1000 - 20, "a worker had claimed it: charged"
    assert runtime.store.delete_prefix(f"images/acme/{job}/") == 0, "nothing was stored"


def test_finished_images_outlive_a_store_outage(runtime: Runtime, monkeypatch) -> None:
    """The store refuses uploads for a while: the job stays processing, and once the store
    is back it succeeds with every image (nothing storage_failed, nothing refunded)."""
    from storage import UploadFailed

    down = threading.Event()
    down.set()
    real_put = runtime.store.put

    def put(key: str, data: bytes, *, content_type: str) -> None:
        if down.is_set():
            raise UploadFailed("connection refused (simulated outage)", key=key)
        real_put(key, data, content_type=content_type)

    monkeypatch.setattr(runtime.store, "put", put)
    job = accept(runtime, 12, images=2)
    run_batch(runtime, [job])
    time.sleep(2)
    record = runtime.jobs.get(job)
    assert record is not None and record.status is JobStatus.PROCESSING, "kept, not dropped"
    down.clear()
    record = wait_terminal(runtime, [job], timeout=30)[job]
    assert record.status is JobStatus.SUCCEEDED
    assert [image.error for image in record.images] == [None, None]
    assert balance(runtime) == 1000 - 20


def test_references_unreadable_for_an_outage_wait_for_the_store(
    runtime: Runtime, monkeypatch
) -> None:
    """The store is down when a job's references are read: the job is neither failed nor
    run; its lease is let go, so the beat hands it out again once the store is back."""
    from storage import StorageError

    key = "refs/acme/req_exec000000000013/0.png"
    runtime.store.put(key, b"png", content_type="image/png")

    def down(key: str) -> bytes:
        raise StorageError("connection refused (simulated outage)", key=key)

    monkeypatch.setattr(runtime.store, "get", down)
    job = accept(runtime, 13, reference_keys=(key,))
    run_batch(runtime, [job])
    record = runtime.jobs.get(job)
    assert record is not None and record.status is JobStatus.PROCESSING
    assert record.error is None and balance(runtime) == 990
    from scheduler.stages.running import _state

    assert not _state(runtime).leases.holds(job), "its lease lapses: nobody renews it"


def test_the_pass_records_each_jobs_progress_under_its_attempt(runtime: Runtime) -> None:
    refined, plain = accept(runtime, 30, images=2), accept(runtime, 31, size=(1024, 1024))
    run_batch(runtime, [refined, plain])
    wait_terminal(runtime, [refined, plain])
    # The pass's last write: every step of each job's schedule (tiny's four steps, plus
    # the refinement's one at 2K), under attempt 1; the succeeded record hides it.
    assert runtime.redis.hget(f"xsd:job:{refined}", "progress") == "1:5:5"
    assert runtime.redis.hget(f"xsd:job:{plain}", "progress") == "1:4:4"
