"""Batches in a real GPU worker (the benchmark stand-in, so passes take real time): jobs
waiting in the queue go into full batches."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from scheduler.stages.celery_app import gpu_queue
from tests.fixtures.stack import start_stack

pytestmark = pytest.mark.slow


def test_jobs_waiting_in_the_queue_fill_every_batch(tmp_path: Path, redis_server: str) -> None:
    """Two batches' worth of jobs wait in the queue; the worker runs them as two full
    batches. Each pass (8 images of 3.7 MP at 0.2 s/MP, ~6 s) outlasts the 2 s batch wait,
    which used to leave the timer overdue when the first batch returned, so the second
    batch left with its first job or two and the rest made a third."""
    stack = start_stack(
        tmp_path,
        redis_server,
        XSD_STAND_IN_SECONDS_PER_MEGAPIXEL="0.2",
        XSD_BATCH_WAIT_SECONDS="2",
        XSD_LEASE_SECONDS="30",
    )
    try:
        worker = stack.supervisor.children["gpu-worker"]
        worker.terminate()
        worker.wait()
        key = stack.new_key()
        with stack.client(key) as client:
            ids = [
                client.create_generation(
                    endUserEmail="alice@your-product.com",
                    model="xSD4.5",
                    prompt=f"a lighthouse number {index}",
                    size="1920x1920",
                )["requestId"]
                for index in range(16)
            ]
            queue = gpu_queue("xSD4.5", "2k")
            deadline = time.monotonic() + 60
            while stack.redis.llen(queue) < 16:
                assert time.monotonic() < deadline, "the jobs never all reached the GPU queue"
                time.sleep(0.1)
            stack.supervisor.spawn("gpu-worker")
            for request_id in ids:
                assert stack.wait(client, request_id, timeout=180)["status"] == "succeeded"
        assert stack.metric("gpu-worker", "xsd_batch_jobs_count") == 2
        assert stack.metric("gpu-worker", "xsd_batch_jobs_sum") == 16
    finally:
        stack.supervisor.stop(grace=10)
