"""Progress end to end: the GPU worker process writes it, the API streams it as events,
the client and ``xsd generate`` show it. The GPU worker serves the benchmark stand-in (one
second per output megapixel: a 2K job's 30 steps take about four seconds), so its steps are
seen through the API's half-second polls however loaded the machine is; the ``tiny``
model's path is ``tests/e2e/test_cli.py``'s ``xsd generate``."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.stack import Stack, start_stack

pytestmark = pytest.mark.slow

PROMPT = "A lighthouse at dawn"
EMAIL = "alice@your-product.com"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[Stack]:
    running = start_stack(
        tmp_path_factory.mktemp("progress"), redis_server, XSD_STAND_IN_SECONDS_PER_MEGAPIXEL="1"
    )
    yield running
    running.supervisor.stop(grace=10)


def test_the_client_streams_a_job_from_queued_to_its_record(stack: Stack) -> None:
    with stack.client(stack.new_key()) as client:
        job = client.create_generation(endUserEmail=EMAIL, model="xSD4.5", prompt=PROMPT)
        events = list(client.stream(job["requestId"], timeout=120))
        final = client.get_generation(job["requestId"])
    assert [e.event for e in events][-1] == "done" and events[-1].data == final
    assert final["status"] == "succeeded" and "progress" not in final
    assert "processing" in [e.data["status"] for e in events]
    progress = [e.data["progress"] for e in events if "progress" in e.data]
    assert progress, "the worker's steps reached the stream"
    assert {p["stepsTotal"] for p in progress} == {30}
    done = [p["stepsDone"] for p in progress]
    assert done == sorted(done) and len(set(done)) == len(done)


def test_xsd_generate_prints_plain_lines_off_a_terminal(stack: Stack, tmp_path: Path) -> None:
    key = stack.new_key()
    generated = subprocess.run(
        [sys.executable, "-m", "api_shim", "generate", PROMPT, "--out", str(tmp_path),
         "--api-url", stack.base_url, "--api-key", key.api_key, "--email", EMAIL],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    (saved,) = [Path(p) for p in generated.stdout.split()]
    assert saved.stat().st_size > 0
    err = generated.stderr
    assert "\r" not in err and "\x1b" not in err, "nothing redraws off a terminal"
    lines = err.splitlines()
    job_id = saved.name.rsplit("_", 1)[0]
    # Queued: its place once the prepare stage has routed it, nothing more before.
    assert re.fullmatch(rf"{job_id}  queued +(position \d+ in the queue.* +)?[\d.]+ s", lines[0]), (
        lines
    )
    steps = [
        int(match[1])
        for line in lines
        if (
            match := re.fullmatch(rf"{job_id}  processing  (\d+)/30 steps \(\d+%\) +[\d.]+ s", line)
        )
    ]
    assert steps and steps == sorted(steps), lines
    assert re.fullmatch(rf"{job_id}  succeeded +[\d.]+ s", lines[-2]), lines
    assert lines[-1] == f"saved image 1/1: {saved}"


def test_xsd_generate_draws_a_bar_on_a_terminal(stack: Stack, tmp_path: Path) -> None:
    key = stack.new_key()
    terminal, stderr = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "api_shim", "generate", PROMPT, "--out", str(tmp_path),
         "--api-url", stack.base_url, "--api-key", key.api_key, "--email", EMAIL],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=stderr,
    )  # fmt: skip
    os.close(stderr)
    drawn = b""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if select.select([terminal], [], [], 1)[0]:
            try:
                chunk = os.read(terminal, 4096)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            drawn += chunk
    os.close(terminal)
    assert process.wait(timeout=30) == 0, drawn.decode(errors="replace")
    text = drawn.decode()
    assert "\x1b[K" in text, "the line is redrawn in place"
    assert re.search(r"\rreq_\w+  processing  \[#*-*\] +\d+%  \d+/30 steps", text), text
    assert re.search(r"saved image 1/1: .+\.png", text), text
