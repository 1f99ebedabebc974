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

``python -m benchmarks.pool --stand-in SECONDS_PER_MEGAPIXEL [--sizes ...] [--n ...]``
measures instead what the pool costs at GPU rates: the GPU worker serves the benchmark
stand-in (:mod:`pipeline.stand_in`), which holds it for that many seconds per output
megapixel (0.42 is the H200 record for one 1024x1024 image) and returns real-size images,
so claiming, Redis, PNG encoding, uploads and webhooks run against a GPU's pace. For each
size and ``n`` it reports end-to-end images/s against the stand-in's ideal (the images/s of
a worker computing back to back), the GPU worker's idle fraction, and the time the worker's
metrics account for in the window (GPU, idle, uploads, queue wait). The API accepts
3.6 to 16.7 megapixels, so 1K (1024x1024) cannot be asked for.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from api_shim.cli.supervisor import Supervisor
from scheduler.redis.accounts import Accounts
from scheduler.redis.embedded import free_port, free_port_block
from scheduler.settings import Settings

__all__ = ["main", "run"]

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


# Worker metrics read around a window (summed over labels): seconds, then counts.
_WINDOW_METRICS = (
    "xsd_gpu_idle_seconds_total",
    "xsd_gpu_seconds_sum",
    "xsd_storage_upload_seconds_sum",
    "xsd_queue_wait_seconds_sum",
    "xsd_gpu_seconds_count",
    "xsd_storage_upload_seconds_count",
    "xsd_queue_wait_seconds_count",
)


def _scrape(port: int) -> dict[str, float]:
    """The worker's ``_WINDOW_METRICS``, each summed over its labels (0 when absent)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    totals = dict.fromkeys(_WINDOW_METRICS, 0.0)
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


def _throughput_phase(
    base_url: str,
    key: str,
    *,
    in_flight: int,
    seconds: float,
    metrics_port: int,
    body: dict[str, Any] = BODY,
) -> dict[str, float]:
    """Closed loop: keep ``in_flight`` jobs of ``body`` outstanding; count images finished
    in the window, which starts once the first job has finished (model loaded, queue
    full). Jobs still outstanding at the end are cancelled, so a next phase starts on an
    empty queue."""
    client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    outstanding: set[str] = set()
    counter = 0

    def submit() -> None:
        nonlocal counter
        counter += 1
        response = client.post("/v1/generations", json={**body, "seed": 10_000 + counter})
        response.raise_for_status()
        outstanding.add(response.json()["requestId"])

    def finished() -> list[dict[str, Any]]:
        """The outstanding jobs that ended since the last call, each replaced by a new one."""
        records = []
        for request_id in list(outstanding):
            record = client.get(f"/v1/generations/{request_id}").json()
            if record["status"] in ("succeeded", "failed"):
                outstanding.discard(request_id)
                records.append(record)
                submit()
        return records

    _wait_ready(metrics_port)
    for _ in range(in_flight):
        submit()
    while not finished():
        time.sleep(0.1)
    before = _scrape(metrics_port)
    images, jobs, latencies = 0, 0, []
    window_start = time.time()
    while time.time() - window_start < seconds:
        for record in finished():
            if record["status"] == "succeeded":
                images += len(record["images"])
                jobs += 1
                latencies.append(_epoch(record["finishedAt"]) - _epoch(record["createdAt"]))
        time.sleep(0.1)
    window = time.time() - window_start
    spent = {name: value - before[name] for name, value in _scrape(metrics_port).items()}
    for request_id in outstanding:
        client.post(f"/v1/generations/{request_id}/cancel")
    client.close()
    return {
        "seconds": window,
        "jobs": jobs,
        "images": images,
        "images_per_second": images / window,
        "end_to_end_p50_s": statistics.median(latencies) if latencies else float("nan"),
        "gpu_idle_fraction": spent["xsd_gpu_idle_seconds_total"] / window,
        "gpu_busy_fraction": spent["xsd_gpu_seconds_sum"] / window,
        "gpu_batches": spent["xsd_gpu_seconds_count"],
        "upload_seconds_per_object": _mean(spent, "xsd_storage_upload_seconds"),
        "queue_wait_seconds_per_job": _mean(spent, "xsd_queue_wait_seconds"),
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
                metrics_port=supervisor.metrics_ports()["gpu-worker"],
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


def run_stand_in(
    *,
    seconds_per_megapixel: float,
    sizes: list[str],
    ns: list[int],
    seconds: float,
    in_flight: int,
) -> dict[str, Any]:
    """The pool at GPU rates: one closed-loop phase per size and ``n`` against a GPU worker
    serving the stand-in; returns the figures."""
    from pipeline.stand_in import MEGAPIXEL

    phases = []
    with tempfile.TemporaryDirectory(prefix="xsd-pool-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp), metrics_port=free_port_block(3))
        supervisor = _started(
            settings, {"XSD_STAND_IN_SECONDS_PER_MEGAPIXEL": str(seconds_per_megapixel)}
        )
        try:
            (key,) = _funded_keys(supervisor, settings, 1)
            for size in sizes:
                width, height = (int(side) for side in size.split("x"))
                # Images/s of a worker that computes back to back, nothing else.
                ideal = MEGAPIXEL / (seconds_per_megapixel * width * height)
                for n in ns:
                    figures = _throughput_phase(
                        supervisor.base_url,
                        key,
                        in_flight=in_flight,
                        seconds=seconds,
                        metrics_port=supervisor.metrics_ports()["gpu-worker"],
                        body={**BODY, "size": size, "n": n},
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
    return {
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "stand_in_seconds_per_megapixel": seconds_per_megapixel,
        "in_flight": in_flight,
        "phases": phases,
    }


def main(argv: list[str] | None = None) -> None:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="Length of each phase.")
    parser.add_argument("--in-flight", type=int, default=8, help="Jobs kept outstanding.")
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
    args = parser.parse_args(argv)
    if args.stand_in is not None:
        figures = run_stand_in(
            seconds_per_megapixel=args.stand_in,
            sizes=args.sizes.split(","),
            ns=[int(n) for n in args.n.split(",")],
            seconds=args.seconds,
            in_flight=args.in_flight,
        )
    else:
        figures = run(seconds=args.seconds, in_flight=args.in_flight)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
