"""The pool benchmark: the whole service under load, against the bare pipeline.

``python -m benchmarks.pool [--seconds 30] [--json PATH]`` starts the service (embedded
Redis, API, CPU worker, GPU worker, beat) with the ``tiny`` model in a temporary directory
and measures, in one run:

1. POST latency (p50/p99/max) with open-loop load at the spec's rate limit (500 requests
   per minute on one key) and at ten times that, spread over ten keys. The GPU worker is
   stopped during this phase so only the shim and the prepare stage load the machine; the
   jobs created are cancelled (and refunded) afterwards.
2. End-to-end throughput: a closed loop keeps ``--in-flight`` jobs queued for
   ``--seconds``; images per second counts images whose job finished in the window.
3. The GPU worker's idle fraction in that window (``xsd_gpu_idle_seconds_total``).
4. The bare pipeline's throughput on the same machine, after the pool is stopped: the
   same requests through ``ImageGenerator.generate_batch`` in batches of the same size, plus
   the PNG encoding every delivered image needs. The pool's overhead is
   ``1 - end-to-end / bare``.

``python -m benchmarks.pool --stand-in SECONDS_PER_MEGAPIXEL [--sizes ...] [--n ...]
[--passes P] [--queued Q]`` measures instead what the pool costs at GPU rates: the GPU
worker serves the benchmark stand-in (:mod:`pipeline.stand_in`), which holds it for that
many seconds per output megapixel (0.42 is the H200 record for one 1024x1024 image) and
returns real-size images, so claiming, Redis, PNG encoding, uploads and webhooks (every
job has one, to a local receiver) run against a GPU's pace. For each size and ``n`` a
closed loop keeps ``Q`` jobs waiting in the queue (two batches by default), and a window
of whole passes (at least ``--seconds`` and ``P`` passes, from one pass's end to
another's) counts the images the GPU worker produced (``xsd_images_generated_total``),
so a 4K n=15 job, one long pass, needs no window long enough for jobs to finish in it.
It reports images/s against the stand-in's ideal (the images/s of a worker computing
back to back), the GPU worker's idle fraction, and where the time goes, from the
workers' metrics: claiming per batch, the GPU thread's wait to hand images over, PNG
encoding per image, spool write, upload per object, recording the success, and webhook
delivery; a Markdown table of it follows the JSON. The API accepts 3.6 to 16.7
megapixels, so 1K (1024x1024) cannot be asked for.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import redis

from api_shim.cli.supervisor import Supervisor
from scheduler.redis.accounts import Accounts
from scheduler.redis.embedded import free_port, free_port_block
from scheduler.settings import Settings

__all__ = ["main", "run", "run_stand_in", "stand_in_table"]

SPEC_RATE_PER_MINUTE = 500
BODY = {
    "endUserEmail": "bench@your-product.com",
    "model": "xSD4.5",
    "prompt": "Editorial photo of a lighthouse on a cliff at dawn, 35mm, soft light",
    "size": "2048x2048",
}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _latency_phase(
    base_url: str, keys: list[str], *, rate_per_second: float, seconds: float
) -> tuple[dict[str, float], list[tuple[str, str]]]:
    """Open loop: POSTs start on schedule whatever the previous ones did."""
    clients = [
        httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {k}"}) for k in keys
    ]
    latencies: list[float] = []
    created: list[tuple[str, str]] = []
    errors = 0
    lock = threading.Lock()

    def post(index: int) -> None:
        nonlocal errors
        client = clients[index % len(clients)]
        started = time.perf_counter()
        response = client.post("/v1/generations", json={**BODY, "seed": index})
        elapsed = time.perf_counter() - started
        with lock:
            if response.status_code == 202:
                latencies.append(elapsed)
                created.append((keys[index % len(keys)], response.json()["requestId"]))
            else:
                errors += 1

    total = int(rate_per_second * seconds)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=32) as pool:
        for index in range(total):
            delay = start + index / rate_per_second - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(post, index)
    for client in clients:
        client.close()
    figures = {
        "rate_per_second": rate_per_second,
        "requests": total,
        "errors": errors,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * _percentile(latencies, 0.99),
        "max_ms": 1000 * max(latencies),
    }
    return figures, created


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


# Worker metrics read around a window, each summed over its labels: seconds (``_sum``)
# and counts (``_count``) of histograms, and counters. The GPU worker's say where its time
# goes; the CPU worker's, the webhooks' share.
_HISTOGRAMS = (
    "xsd_gpu_seconds",
    "xsd_claim_seconds",
    "xsd_upload_backlog_wait_seconds",
    "xsd_png_encode_seconds",
    "xsd_spool_write_seconds",
    "xsd_storage_upload_seconds",
    "xsd_record_success_seconds",
    "xsd_queue_wait_seconds",
    "xsd_webhook_delivery_seconds",
)
_COUNTERS = ("xsd_gpu_idle_seconds_total", "xsd_images_generated_total")
_WINDOW_METRICS = (
    *_COUNTERS,
    *(f"{name}_{part}" for name in _HISTOGRAMS for part in ("sum", "count")),
)


def _scrape(*ports: int) -> dict[str, float]:
    """``_WINDOW_METRICS`` of the workers on these metrics ports, each summed over its
    labels and the workers (0 when absent)."""
    totals = dict.fromkeys(_WINDOW_METRICS, 0.0)
    for port in ports:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        for line in text.splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in totals:
                totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


def _wait_ready(port: int, *, timeout: float = 120) -> None:
    """Until the worker on metrics ``port`` answers /readyz (model loaded, consuming)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.5)
    raise TimeoutError(f"the GPU worker was not ready within {timeout:.0f} s")


class _ClosedLoop:
    """Keeps jobs of ``body`` outstanding from a background thread, polling them every
    ``poll_seconds``: at least ``in_flight`` not finished, and at least ``queued`` still
    waiting for a GPU worker (so the worker never lacks work, however long its uploads
    keep jobs from finishing)."""

    def __init__(
        self,
        base_url: str,
        key: str,
        body: dict[str, Any],
        *,
        in_flight: int,
        queued: int,
        poll_seconds: float,
    ) -> None:
        self._client = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        self._body, self._poll_seconds = body, poll_seconds
        self._in_flight, self._queued = in_flight, queued
        self._outstanding: set[str] = set()
        self._records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._counter = 0
        self._refill(waiting=0)
        self._thread = threading.Thread(target=self._run, name="closed-loop", daemon=True)
        self._thread.start()

    def _refill(self, *, waiting: int) -> None:
        """Submit jobs until both bounds hold (``waiting`` jobs are known to be queued)."""
        while len(self._outstanding) < self._in_flight or waiting < self._queued:
            self._counter += 1
            response = self._client.post(
                "/v1/generations", json={**self._body, "seed": 10_000 + self._counter}
            )
            response.raise_for_status()
            self._outstanding.add(response.json()["requestId"])
            waiting += 1

    def _run(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            waiting = 0
            for request_id in list(self._outstanding):
                record = self._client.get(f"/v1/generations/{request_id}").json()
                if record["status"] == "queued":
                    waiting += 1
                elif record["status"] in ("succeeded", "failed"):
                    self._outstanding.discard(request_id)
                    with self._lock:
                        self._records.append(record)
            self._refill(waiting=waiting)

    def finished(self) -> list[dict[str, Any]]:
        """The records of the jobs that ended since the last call."""
        with self._lock:
            records, self._records = self._records, []
        return records

    def stop(self) -> None:
        """Stop refilling and cancel what is outstanding, so a next phase starts on an empty
        queue."""
        self._stop.set()
        self._thread.join()
        for request_id in self._outstanding:
            self._client.post(f"/v1/generations/{request_id}/cancel")
        self._client.close()


def _next_pass_end(port: int, images: float, *, poll_seconds: float) -> tuple[float, float]:
    """Polls the GPU worker until its images counter passes ``images`` (a pass ended);
    returns when, and the counter."""
    while True:
        now = _scrape(port)["xsd_images_generated_total"]
        if now > images:
            return time.time(), now
        time.sleep(poll_seconds)


def _throughput_phase(
    base_url: str,
    key: str,
    *,
    seconds: float,
    metrics_ports: dict[str, int],
    body: dict[str, Any] = BODY,
    in_flight: int = 0,
    queued: int = 0,
    passes: int = 1,
    poll_seconds: float = 0.25,
) -> dict[str, Any]:
    """Closed loop: keep ``in_flight`` jobs of ``body`` outstanding and ``queued`` of them
    waiting for the GPU worker (:class:`_ClosedLoop`). The window runs from
    the end of the first pass of these jobs (model loaded, queue full) to the
    end of the first pass after at least ``seconds`` and ``passes`` passes, so it holds
    whole passes. Images are counted as the GPU worker produces them
    (``xsd_images_generated_total``), so a window needs no job to end in it; the jobs that
    ended in it give the end-to-end figures. Jobs still outstanding at the end are
    cancelled."""
    gpu_port = metrics_ports["gpu-worker"]
    _wait_ready(gpu_port)
    # Jobs are polled less often than the worker's metrics: the queue holds a batch in
    # reserve, and polling every job often would load the API more than the pool.
    loop = _ClosedLoop(
        base_url, key, body, in_flight=in_flight, queued=queued, poll_seconds=4 * poll_seconds
    )
    try:
        started, images = _next_pass_end(
            gpu_port, _scrape(gpu_port)["xsd_images_generated_total"], poll_seconds=poll_seconds
        )
        before = _scrape(*metrics_ports.values())
        loop.finished()
        while True:
            ended, images = _next_pass_end(gpu_port, images, poll_seconds=poll_seconds)
            after = _scrape(*metrics_ports.values())
            if (
                ended - started >= seconds
                and after["xsd_gpu_seconds_count"] - before["xsd_gpu_seconds_count"] >= passes
            ):
                break
        records = loop.finished()
    finally:
        loop.stop()
    window = ended - started
    spent = {name: after[name] - before[name] for name in _WINDOW_METRICS}
    latencies = [
        _epoch(record["finishedAt"]) - _epoch(record["createdAt"])
        for record in records
        if record["status"] == "succeeded"
    ]
    return {
        "seconds": window,
        "passes": spent["xsd_gpu_seconds_count"],
        "images": spent["xsd_images_generated_total"],
        "images_per_second": spent["xsd_images_generated_total"] / window,
        # Images stored in the window: below the produced rate, encoding and uploads fall
        # behind the GPU (and would stall it once the encoding backlog is full).
        "stored_per_second": spent["xsd_storage_upload_seconds_count"] / window,
        "jobs_ended": len(records),
        "jobs_failed": sum(1 for record in records if record["status"] != "succeeded"),
        "end_to_end_p50_s": statistics.median(latencies) if latencies else float("nan"),
        "gpu_idle_fraction": spent["xsd_gpu_idle_seconds_total"] / window,
        "gpu_busy_fraction": spent["xsd_gpu_seconds_sum"] / window,
        # Where the time goes: each stage's seconds per window second (background threads
        # can run several at once), and per item (batch, image, job, object, delivery).
        "share": {
            name: spent[f"{name}_sum"] / window for name in _HISTOGRAMS if name != "xsd_gpu_seconds"
        },
        "mean": {name: _mean(spent, name) for name in _HISTOGRAMS},
    }


def _mean(spent: dict[str, float], histogram: str) -> float:
    count = spent[f"{histogram}_count"]
    return spent[f"{histogram}_sum"] / count if count else float("nan")


def _bare_pipeline(*, batch: int, seconds: float) -> dict[str, float]:
    """The same requests through the pipeline alone, plus PNG encoding."""
    from pipeline import GenerationRequest, ModelRegistry, encode_png, load_generator
    from scheduler.stages.uploading import PNG_COMPRESS_LEVEL

    generator = load_generator(ModelRegistry.from_config(None).get("xSD4.5"))
    requests = [
        GenerationRequest(
            request_id=f"req_bench{i}",
            model="xSD4.5",
            prompt=BODY["prompt"],
            width=2048,
            height=2048,
            seeds=(i,),
            guidance_scale=7.5,
        )
        for i in range(batch)
    ]
    generator.generate_batch(requests)  # warm-up
    images, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for outcome in generator.generate_batch(requests):
            assert isinstance(outcome, list)
            for image in outcome:
                encode_png(image, text={}, compress_level=PNG_COMPRESS_LEVEL)
                images += 1
    elapsed = time.perf_counter() - started
    return {
        "batch": batch,
        "images": images,
        "seconds": elapsed,
        "images_per_second": images / elapsed,
    }


def run(*, seconds: float, in_flight: int) -> dict[str, Any]:
    """Run every phase; returns the figures."""
    with tempfile.TemporaryDirectory(prefix="xsd-pool-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp), metrics_port=free_port_block(3))
        supervisor = _started(settings, {"XSD_RATE_LIMIT_PER_MINUTE": str(SPEC_RATE_PER_MINUTE)})
        try:
            keys = _funded_keys(supervisor, settings, 12)
            gpu = supervisor.children["gpu-worker"]
            gpu.terminate()
            gpu.wait()
            spec_rate = SPEC_RATE_PER_MINUTE / 60
            at_limit, created_a = _latency_phase(
                supervisor.base_url, keys[:1], rate_per_second=spec_rate, seconds=seconds
            )
            tenfold, created_b = _latency_phase(
                supervisor.base_url, keys[1:11], rate_per_second=10 * spec_rate, seconds=seconds
            )
            for key, request_id in created_a + created_b:
                httpx.post(
                    f"{supervisor.base_url}/v1/generations/{request_id}/cancel",
                    headers={"Authorization": f"Bearer {key}"},
                )
            supervisor.spawn("gpu-worker")
            throughput = _throughput_phase(
                supervisor.base_url,
                keys[11],
                in_flight=in_flight,
                seconds=seconds,
                metrics_ports={"gpu-worker": supervisor.metrics_ports()["gpu-worker"]},
            )
        finally:
            supervisor.stop()
    bare = _bare_pipeline(batch=min(in_flight, settings.batch_max_jobs), seconds=seconds)
    return {
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "post_latency_at_spec_limit": at_limit,
        "post_latency_at_10x_over_10_keys": tenfold,
        "end_to_end": throughput,
        "bare_pipeline": bare,
        "pool_overhead_percent": 100
        * (1 - throughput["images_per_second"] / bare["images_per_second"]),
    }


def _started(settings: Settings, env: dict[str, str]) -> Supervisor:
    """The whole service on free ports, under ``settings.data_dir``."""
    supervisor = Supervisor(
        settings, host="127.0.0.1", port=free_port(), log_dir=settings.data_dir / "logs", env=env
    )
    supervisor.start()
    return supervisor


def _funded_keys(supervisor: Supervisor, settings: Settings, count: int) -> list[str]:
    """``count`` API keys with credits for any run."""
    assert supervisor.redis_url is not None
    accounts = Accounts(
        redis.Redis.from_url(supervisor.redis_url, decode_responses=True),
        pepper=settings.pepper,
    )
    keys = []
    for index in range(count):
        name = f"bench{index}"
        keys.append(accounts.create_key(name).api_key)
        accounts.add_credits(name, 10**9)
    return keys


class _WebhookReceiver:
    """A local endpoint that answers every webhook 204, so deliveries cost the CPU worker
    what they would against a quick receiver."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass  # one line per delivery would drown the benchmark's output

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop answering."""
        self._server.shutdown()
        self._server.server_close()


def run_stand_in(
    *,
    seconds_per_megapixel: float,
    sizes: list[str],
    ns: list[int],
    seconds: float,
    queued: int | None = None,
    passes: int = 1,
) -> dict[str, Any]:
    """The pool at GPU rates: one closed-loop phase per size and ``n`` against a GPU worker
    serving the stand-in, every job with a webhook to a local receiver; returns the
    figures. ``queued`` (jobs kept waiting for the worker) defaults to two batches
    (``2 x XSD_BATCH_MAX_JOBS``), so a full batch is always there for the next pass."""
    from pipeline.stand_in import MEGAPIXEL

    phases = []
    receiver = _WebhookReceiver()
    with tempfile.TemporaryDirectory(prefix="xsd-pool-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp), metrics_port=free_port_block(3))
        queued = queued or 2 * settings.batch_max_jobs
        supervisor = _started(
            settings,
            {
                "XSD_STAND_IN_SECONDS_PER_MEGAPIXEL": str(seconds_per_megapixel),
                # The receiver is on loopback, which the SSRF guard refuses otherwise.
                "XSD_ALLOW_PRIVATE_URLS": "true",
            },
        )
        try:
            (key,) = _funded_keys(supervisor, settings, 1)
            ports = supervisor.metrics_ports()
            for size in sizes:
                width, height = (int(side) for side in size.split("x"))
                # Images/s of a worker that computes back to back, nothing else.
                ideal = MEGAPIXEL / (seconds_per_megapixel * width * height)
                for n in ns:
                    figures = _throughput_phase(
                        supervisor.base_url,
                        key,
                        queued=queued,
                        seconds=seconds,
                        passes=passes,
                        metrics_ports={name: ports[name] for name in ("gpu-worker", "cpu-worker")},
                        body={**BODY, "size": size, "n": n, "webhookUrl": receiver.url},
                    )
                    phases.append(
                        {
                            "size": size,
                            "n": n,
                            "ideal_images_per_second": ideal,
                            "of_ideal": figures["images_per_second"] / ideal,
                            **figures,
                        }
                    )
        finally:
            supervisor.stop()
            receiver.close()
    return {
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "stand_in_seconds_per_megapixel": seconds_per_megapixel,
        "queued": queued,
        "phases": phases,
    }


# The table ``--stand-in`` prints: a column title and how a phase's figure reads.
_COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("size", lambda p: p["size"]),
    ("n", lambda p: str(p["n"])),
    ("window", lambda p: f"{p['seconds']:.0f} s"),
    ("passes", lambda p: f"{p['passes']:.0f}"),
    ("images/pass", lambda p: f"{p['images'] / p['passes']:.1f}"),
    ("images/s", lambda p: f"{p['images_per_second']:.3f}"),
    ("of ideal", lambda p: f"{100 * p['of_ideal']:.1f}%"),
    ("GPU idle", lambda p: f"{100 * p['gpu_idle_fraction']:.1f}%"),
    ("stored/s", lambda p: f"{p['stored_per_second']:.3f}"),
    ("claim/batch", lambda p: _ms(p["mean"]["xsd_claim_seconds"])),
    ("hand-over wait", lambda p: f"{100 * p['share']['xsd_upload_backlog_wait_seconds']:.1f}%"),
    ("PNG/image", lambda p: _ms(p["mean"]["xsd_png_encode_seconds"])),
    ("spool write/job", lambda p: _ms(p["mean"]["xsd_spool_write_seconds"])),
    ("upload/object", lambda p: _ms(p["mean"]["xsd_storage_upload_seconds"])),
    ("record/job", lambda p: _ms(p["mean"]["xsd_record_success_seconds"])),
    ("webhook", lambda p: _ms(p["mean"]["xsd_webhook_delivery_seconds"])),
)


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{1000 * seconds:.0f} ms"


def stand_in_table(figures: dict[str, Any]) -> str:
    """The phases of a ``--stand-in`` run as a Markdown table."""
    lines = [
        "| " + " | ".join(title for title, _ in _COLUMNS) + " |",
        "|" + "---|" * len(_COLUMNS),
    ]
    for phase in figures["phases"]:
        lines.append("| " + " | ".join(cell(phase) for _, cell in _COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="Length of each phase (at least)."
    )
    parser.add_argument("--in-flight", type=int, default=8, help="Jobs kept outstanding.")
    parser.add_argument(
        "--queued",
        type=int,
        default=None,
        help="With --stand-in: jobs kept waiting for the GPU worker (default two batches).",
    )
    parser.add_argument("--json", type=Path, default=None, help="Write the figures here.")
    parser.add_argument(
        "--stand-in",
        type=float,
        default=None,
        metavar="SECONDS_PER_MEGAPIXEL",
        help="Measure the pool at GPU rates against the benchmark stand-in model.",
    )
    parser.add_argument(
        "--sizes",
        default="2048x2048,4096x4096",
        help="With --stand-in: comma-separated WIDTHxHEIGHT sizes (3.6 to 16.7 MP).",
    )
    parser.add_argument(
        "--n", default="1,15", help="With --stand-in: comma-separated images per request."
    )
    parser.add_argument(
        "--passes",
        type=int,
        default=1,
        help="With --stand-in: GPU passes each window holds at least, besides --seconds.",
    )
    args = parser.parse_args(argv)
    if args.stand_in is not None:
        figures = run_stand_in(
            seconds_per_megapixel=args.stand_in,
            sizes=args.sizes.split(","),
            ns=[int(n) for n in args.n.split(",")],
            seconds=args.seconds,
            queued=args.queued,
            passes=args.passes,
        )
    else:
        figures = run(seconds=args.seconds, in_flight=args.in_flight)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.stand_in is not None:
        print(stand_in_table(figures))
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
