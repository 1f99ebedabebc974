"""The fairness benchmark: a light account's wait while another floods the pool.

``python -m benchmarks.fairness [--stand-in 0.05] [--size 2048x2048] [--flood-jobs 25]
[--flood-n 8] [--light-jobs 10] [--json PATH]`` starts the service (embedded Redis, API,
CPU worker, GPU worker serving the benchmark stand-in, beat) and runs three phases on one
pool:

1. Idle: account B posts ``--light-jobs`` single-image jobs at once on an empty pool.
2. Flood alone: account A posts ``--flood-jobs`` jobs of ``--flood-n`` images at once; the
   pool's throughput on them is the baseline.
3. Flood and light: A floods again, and B posts its single-image jobs three seconds later.

A job's wait is from its POST to a GPU worker claiming it (the record's ``created_ms`` and
``started_ms`` in Redis). It reports B's wait (p50, p99) idle and under the flood, what B
would wait in arrival order (the flood's images ahead of it at the pool's rate), and A's
and the pool's images per second with B against the flood alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import redis

from scheduler.redis.accounts import Accounts
from scheduler.redis.embedded import free_port_block
from scheduler.settings import Settings

from .pool import BODY, _percentile, _started, _wait_ready

__all__ = ["main", "run"]

# B posts this long after A's flood is queued.
LIGHT_DELAY_SECONDS = 3.0


def _post_all(base_url: str, key: str, count: int, n: int, seed: int, size: str) -> list[str]:
    """Post ``count`` jobs of ``n`` images of ``size`` at once (in parallel); their ids."""
    with httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as client:

        def post(index: int) -> str:
            body = {**BODY, "size": size, "n": n, "seed": seed + index}
            response = client.post("/v1/generations", json=body)
            response.raise_for_status()
            return response.json()["requestId"]

        with ThreadPoolExecutor(max_workers=16) as pool:
            return list(pool.map(post, range(count)))


def _records(client: redis.Redis, ids: list[str], *, timeout: float) -> list[dict[str, Any]]:
    """Wait until every job is terminal; their times (s) and images."""
    deadline = time.time() + timeout
    while True:
        pipe = client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(
                f"xsd:job:{job_id}",
                "status",
                "created_ms",
                "started_ms",
                "finished_ms",
                "image_count",
            )
        rows = pipe.execute()
        if all(row[0] in ("succeeded", "failed") for row in rows):
            break
        if time.time() > deadline:
            raise TimeoutError("the jobs did not finish in time")
        time.sleep(0.25)
    failed = sum(row[0] == "failed" for row in rows)
    if failed:
        raise RuntimeError(f"{failed} jobs failed; see the logs")
    return [
        {
            "created": int(row[1]) / 1000,
            "started": int(row[2]) / 1000,
            "finished": int(row[3]) / 1000,
            "images": int(row[4]),
        }
        for row in rows
    ]


def _waits(records: list[dict[str, Any]]) -> dict[str, float]:
    waits = [r["started"] - r["created"] for r in records]
    return {"p50_s": statistics.median(waits), "p99_s": _percentile(waits, 0.99)}


def _batch_seconds(records: list[dict[str, Any]]) -> float:
    """The median time between batches: a batch claims its jobs together, so claim times
    fall in groups, one per batch."""
    starts = sorted(r["started"] for r in records)
    firsts = [
        t
        for previous, t in zip([None, *starts], starts, strict=False)
        if previous is None or t - previous > 0.5
    ]
    gaps = [b - a for a, b in zip(firsts, firsts[1:], strict=False)]
    return statistics.median(gaps) if gaps else float("nan")


def _rate(records: list[dict[str, Any]]) -> float:
    """Images per second from the first POST to the last finish."""
    span = max(r["finished"] for r in records) - min(r["created"] for r in records)
    return sum(r["images"] for r in records) / span


def run(
    *, seconds_per_megapixel: float, size: str, flood_jobs: int, flood_n: int, light_jobs: int
) -> dict[str, Any]:
    """The three phases on one pool; returns the figures."""
    timeout = 600.0
    with tempfile.TemporaryDirectory(prefix="xsd-fair-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp), metrics_port=free_port_block(3))
        supervisor = _started(
            settings,
            {
                "XSD_STAND_IN_SECONDS_PER_MEGAPIXEL": str(seconds_per_megapixel),
                "XSD_RATE_LIMIT_PER_MINUTE": "100000",
            },
        )
        try:
            assert supervisor.redis_url is not None
            client = redis.Redis.from_url(supervisor.redis_url, decode_responses=True)
            accounts = Accounts(client, pepper=settings.pepper)
            flood_key, light_key = (accounts.create_key(name).api_key for name in ("a", "b"))
            for name in ("a", "b"):
                accounts.add_credits(name, 10**9)
            base = supervisor.base_url
            _wait_ready(supervisor.metrics_ports()["gpu-worker"])
            # Warm-up: the first batch pays for loading the stand-in.
            _records(client, _post_all(base, light_key, 1, 1, 0, size), timeout=timeout)

            idle = _records(
                client, _post_all(base, light_key, light_jobs, 1, 100, size), timeout=timeout
            )

            alone = _records(
                client, _post_all(base, flood_key, flood_jobs, flood_n, 1000, size), timeout=timeout
            )

            flood_ids = _post_all(base, flood_key, flood_jobs, flood_n, 2000, size)
            time.sleep(LIGHT_DELAY_SECONDS)
            light_ids = _post_all(base, light_key, light_jobs, 1, 3000, size)
            flooded = _records(client, flood_ids, timeout=timeout)
            light = _records(client, light_ids, timeout=timeout)
        finally:
            supervisor.stop()
    pool_alone = _rate(alone)
    light_posted = min(r["created"] for r in light)
    # In arrival order B would wait for every flood image not yet started when it posted.
    ahead = sum(r["images"] for r in flooded if r["started"] > light_posted)
    return {
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "stand_in_seconds_per_megapixel": seconds_per_megapixel,
        "size": size,
        "flood": {"jobs": flood_jobs, "n": flood_n, "images": flood_jobs * flood_n},
        "light_jobs": light_jobs,
        "light_wait_idle": _waits(idle),
        "light_wait_under_flood": _waits(light),
        "light_wait_in_arrival_order_estimate_s": ahead / pool_alone,
        "seconds_between_batches": _batch_seconds(alone),
        "pool_images_per_second_flood_alone": pool_alone,
        "pool_images_per_second_flood_and_light": _rate(flooded + light),
        "flood_images_per_second_with_light": _rate(flooded),
    }


def main(argv: list[str] | None = None) -> None:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--stand-in",
        type=float,
        default=0.05,
        metavar="SECONDS_PER_MEGAPIXEL",
        help="How long the stand-in model holds the GPU worker per output megapixel.",
    )
    parser.add_argument("--size", default="2048x2048", help="WIDTHxHEIGHT of every image.")
    parser.add_argument("--flood-jobs", type=int, default=25, help="Jobs account A posts.")
    parser.add_argument("--flood-n", type=int, default=8, help="Images per job of A.")
    parser.add_argument("--light-jobs", type=int, default=10, help="Single jobs B posts.")
    parser.add_argument("--json", type=Path, default=None, help="Write the figures here.")
    args = parser.parse_args(argv)
    figures = run(
        seconds_per_megapixel=args.stand_in,
        size=args.size,
        flood_jobs=args.flood_jobs,
        flood_n=args.flood_n,
        light_jobs=args.light_jobs,
    )
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
