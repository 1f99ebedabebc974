"""Crashes and stops: a GPU worker SIGKILLed mid-job, a running job deleted, an enqueue lost."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.receivers import WebhookReceiver
from tests.fixtures.stack import Stack, start_stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def crash_stack(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("crash"), redis_server)
    yield running
    running.supervisor.stop(grace=10)


def wait_for_status(stack: Stack, key, request_id: str, status: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with stack.client(key) as client:
        while client.get_generation(request_id)["status"] != status:
            assert time.monotonic() < deadline, f"{request_id} never became {status}"
            time.sleep(0.05)


def start_4k_job(stack: Stack, key, *, n: int, **body) -> str:
    """A job of several 4K images (long enough on CPU to be caught in the middle), once a
    worker is processing it."""
    with stack.client(key) as client:
        job = client.create_generation(
            endUserEmail="alice@your-product.com",
            model="xSD4.5",
            prompt="a harbour at night",
            size="4K",
            n=n,
            **body,
        )
    wait_for_status(stack, key, job["requestId"], "processing")
    return job["requestId"]


def test_sigkill_mid_job(crash_stack: Stack, webhook_receiver: WebhookReceiver) -> None:
    stack = crash_stack
    key = stack.new_key()
    webhook_receiver.secret = key.webhook_secret
    request_id = start_4k_job(stack, key, n=4, webhookUrl=webhook_receiver.url)
    with stack.client(key) as client:
        worker = stack.supervisor.children["gpu-worker"]
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        assert client.get_generation(request_id)["status"] == "processing"
        stack.supervisor.spawn("gpu-worker")
        record = stack.wait(client, request_id, timeout=180)
    assert record["status"] == "succeeded", record
    assert len(record["images"]) == 4 and all("url" in i for i in record["images"])
    assert record["cost"] == {"xTokens": 40}
    assert stack.balance(key.account) == 960, "charged exactly once"
    stored = stack.redis.hget(f"xsd:job:{request_id}", "attempt")
    assert stored == "2", "a second attempt took the job over"
    in_flight = stack.redis.hgetall("xsd:inflight")
    assert f"acct:{key.account}" not in in_flight, "its images left the in-flight count once"
    (delivery,) = webhook_receiver.wait_for(1)
    time.sleep(2)
    assert len(webhook_receiver.deliveries) == 1 and delivery.verified


def test_drain_stops_consumption(crash_stack: Stack) -> None:
    import socket
    import subprocess
    import sys

    stack = crash_stack
    env = stack.supervisor.environment("gpu-worker")
    hostname = f"gpu@{socket.gethostname()}"
    drained = subprocess.run(
        [sys.executable, "-m", "api_shim", "drain", "--hostname", hostname],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "gpu.xsd45.2k" in drained.stdout and "gpu.xsd45.4k" in drained.stdout
    key = stack.new_key()
    with stack.client(key) as client:
        job = client.create_generation(
            endUserEmail="alice@your-product.com", model="xSD4.5", prompt="a quiet lake"
        )
        time.sleep(4)
        assert client.get_generation(job["requestId"])["status"] == "queued"
        # A fresh worker (what Kubernetes starts after the drained pod) takes it.
        worker = stack.supervisor.children["gpu-worker"]
        worker.terminate()
        worker.wait(timeout=30)
        stack.supervisor.spawn("gpu-worker")
        assert stack.wait(client, job["requestId"])["status"] == "succeeded"


def test_deleting_a_running_job_stops_its_work_and_keeps_the_charge(crash_stack: Stack) -> None:
    stack = crash_stack
    key = stack.new_key()
    generated = stack.metric("gpu-worker", "xsd_images_generated_total")
    stopped = stack.metric("gpu-worker", "xsd_jobs_stopped_total")
    request_id = start_4k_job(stack, key, n=3)
    with stack.client(key) as client:
        deleted = client.delete_generation(request_id)
    assert deleted["refundedXTokens"] == 0, "a worker had claimed it"
    assert stack.balance(key.account) == 970
    deadline = time.monotonic() + 30
    while stack.metric("gpu-worker", "xsd_jobs_stopped_total") == stopped:
        assert time.monotonic() < deadline, "the worker never stopped the deleted job"
        time.sleep(0.2)
    assert stack.metric("gpu-worker", "xsd_images_generated_total") == generated
    prefix = Path(stack.settings.objects_dir) / "images" / key.account / request_id
    assert not prefix.exists(), "nothing of it was stored"


def test_a_job_whose_enqueue_was_lost_still_runs(crash_stack: Stack, monkeypatch) -> None:
    """The API died between the debit and the enqueue (here: the enqueue fails), and the
    client, which never got its answer, retries with the same Idempotency-Key against the
    real API: the replay is answered 202 with the same job, which the outbox hands to the
    workers; it succeeds and is charged once."""
    import scheduler.service as service_module
    from scheduler.jobs.records import JobInput
    from scheduler.runtime import init
    from scheduler.service import Service

    stack = crash_stack
    key = stack.new_key()

    def broker_gone(job_id: str) -> None:
        raise ConnectionError("the broker went away")

    monkeypatch.setattr(service_module, "send_prepare", broker_gone)
    service = Service(init(stack.settings))
    principal = service.authenticate(f"Bearer {key.api_key}")
    body = {"endUserEmail": "alice@your-product.com", "model": "xSD4.5", "prompt": "a lighthouse"}
    job = JobInput(model=body["model"], prompt=body["prompt"], end_user_email=body["endUserEmail"])
    view, _ = service.submit(principal, job, idempotency_key="lost-enqueue-1")
    assert view["status"] == "queued"
    with stack.client(key) as client:
        replayed = client.create_generation(idempotency_key="lost-enqueue-1", **body)
        assert replayed["requestId"] == view["requestId"]
        record = stack.wait(client, view["requestId"], timeout=120)
    assert record["status"] == "succeeded", record
    assert stack.balance(key.account) == 990


def test_a_generate_message_that_died_with_a_worker_is_sent_again(crash_stack: Stack) -> None:
    """A GPU worker's consumer popped a job's message and died with it (kombu had not yet
    recorded it as unacknowledged): the job is still queued, with no message anywhere. The
    outbox sends it again after XSD_DISPATCH_RETRY_SECONDS and it succeeds."""
    stack = crash_stack
    key = stack.new_key()
    worker = stack.supervisor.children["gpu-worker"]
    worker.terminate()
    worker.wait(timeout=30)
    queue = "gpu.xsd45.2k"
    with stack.client(key) as client:
        job = client.create_generation(
            endUserEmail="alice@your-product.com", model="xSD4.5", prompt="a quiet lake"
        )
        deadline = time.monotonic() + 30
        while not stack.redis.llen(queue):
            assert time.monotonic() < deadline, "prepare never routed the job"
            time.sleep(0.1)
        stack.redis.delete(queue)  # the message is gone with the "dead" consumer
        stack.supervisor.spawn("gpu-worker")
        record = stack.wait(client, job["requestId"], timeout=120)
    assert record["status"] == "succeeded", record
    assert stack.balance(key.account) == 990
    assert int(stack.redis.hget(f"xsd:job:{job['requestId']}", "dispatches") or 0) >= 1


def test_a_worker_that_dies_with_spooled_images_has_its_job_generated_again(
    crash_stack: Stack,
) -> None:
    """The store refuses an image, so the job's images wait in the GPU worker's spool; the
    worker is SIGKILLed: the spool dies with it, the job's lease lapses, and the restarted
    worker (which clears what its predecessor left) generates the job again. It succeeds
    under attempt 2 and is charged once."""
    stack = crash_stack
    key = stack.new_key()
    with stack.client(key) as client:
        job = client.create_generation(
            endUserEmail="alice@your-product.com", model="xSD4.5", prompt="two boats", n=2
        )
        request_id = job["requestId"]
        folder = Path(stack.settings.objects_dir) / "images" / key.account / request_id
        blocker = folder / "1.png"
        blocker.mkdir(parents=True)  # a directory where the image must go: uploads fail
        spool = Path(stack.settings.data_dir) / "spool"
        deadline = time.monotonic() + 120
        while not any(spool.glob(f"{request_id}.*/1.png")):
            assert time.monotonic() < deadline, "the image never reached the spool"
            time.sleep(0.1)
        worker = stack.supervisor.children["gpu-worker"]
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        blocker.rmdir()
        stack.supervisor.spawn("gpu-worker")
        record = stack.wait(client, request_id, timeout=180)
    assert record["status"] == "succeeded", record
    assert all("url" in image for image in record["images"])
    assert stack.balance(key.account) == 980, "charged once"
    assert stack.redis.hget(f"xsd:job:{request_id}", "attempt") == "2"
    assert not any(spool.glob(f"{request_id}.1")), "the dead worker's spool was cleared"
