"""The GPU stage in process: real Redis, real tiny model, local store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from scheduler.execution import run_batch
from scheduler.records import JobRecord
from scheduler.runtime import Runtime, init
from scheduler.settings import Settings
from scheduler.states import JobStatus

from .factories import accept as store
from .factories import job_record


@pytest.fixture
def runtime(redis_url: str, tmp_path: Path) -> Runtime:
    rt = init(
        Settings(data_dir=tmp_path, redis_url=redis_url, api_key_pepper="p", url_signing_key="k")
    )
    rt.accounts.ensure("acme")
    rt.accounts.add_credits("acme", 1000)
    return rt


def accept(
    rt: Runtime, index: int, *, images: int = 1, reference_keys: tuple[str, ...] = ()
) -> str:
    record = job_record(
        id=f"req_exec{index:012d}",
        prompt=f"a lighthouse number {index}",
        created_ms=rt.jobs.now_ms(),
        image_count=images,
        seed=index,
        references=("https://cdn.your-product.com/x.png",) if reference_keys else (),
    )
    store(rt.jobs, record, deadline_ms=record.created_ms + 600_000, purge_ms=10**15)
    if reference_keys:
        rt.jobs.update_queued(record.id, {"reference_keys": f'["{reference_keys[0]}"]'})
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
