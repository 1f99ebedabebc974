"""The chaos suite: jobs and money through crashes of every part of the pool.

``python -m benchmarks.chaos [--quick] [--scenarios a,b] [--jobs N] [--json PATH]``

Starts the pool as separate processes on loopback (see :mod:`benchmarks.chaos_pool`:
redis-server with an AOF, moto's S3 server behind a breakable proxy, a webhook receiver
that verifies signatures, an image host for references; the API, a CPU worker, two GPU
workers on ``tiny`` and the beat under the product's supervisor), and drives a mix of jobs
(:func:`benchmarks.chaos_load.plan_jobs`) through each scenario:

- ``baseline``: no fault.
- ``gpu-kill``: SIGKILL of the busier GPU worker while jobs are processing, three times,
  restarted each time.
- ``gpu-freeze``: SIGSTOP of the busier GPU worker until the other worker has taken over
  its jobs (past the lease), then SIGCONT: its stale attempts must not finish them.
- ``redis-restart``: Redis stopped with SIGTERM mid-run and started again on its port.
- ``redis-kill``: Redis SIGKILLed mid-run and started again from its AOF; a probe counts
  the acknowledged writes the AOF lost.
- ``redis-outage``: Redis down for a while (20 s) as clients go on posting: every POST
  gets 202 or 503 (never 500) and is accepted on a retry.
- ``s3-refuse`` / ``s3-hang``: S3 refusing connections / accepting and hanging them for
  ``--outage`` seconds (a proxy in front of moto, so that moto keeps its objects): finished
  images wait in the GPU workers' spools and are stored afterwards.
- ``webhook-outage``: the webhook receiver down for ``--outage`` seconds.
- ``api-kill``: the API SIGKILLed mid-burst and restarted; clients retry with their
  ``Idempotency-Key``.

Each scenario runs on a fresh pool (``--shared-pool``: one pool, fresh accounts per
scenario). A scenario's bound: once the fault is over and every POST is answered, its jobs
have ``--settle`` seconds to become terminal (and their webhooks delivered). The figures
are defined in :mod:`benchmarks.chaos_report`; the Markdown table goes to stdout, the
JSON (with every job that went wrong, and what Redis held for it) to ``--json``.

``--quick`` (run by ``make test``): ``gpu-kill`` (one kill) and ``redis-restart`` on one
shared pool, 10 jobs each, no 4K, short outages.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from scheduler.jobs.states import JobStatus
from scheduler.redis import keys

from .chaos_load import TERMINAL, Account, Monitor, Submitter, plan_jobs
from .chaos_net import ProxyMode
from .chaos_pool import GPU_WORKERS, ChaosPool, Timings, answers, wait_until
from .chaos_report import dumps, evaluate, markdown_table

__all__ = ["Plan", "QUICK", "SCENARIOS", "QUICK_SCENARIOS", "run", "main"]


@dataclass(frozen=True)
class Plan:
    """How big and how long each scenario is."""

    jobs: int = 50
    # Jobs are POSTed evenly over this window (the api-kill burst over burst_seconds).
    submit_seconds: float = 40.0
    burst_seconds: float = 6.0
    outage_seconds: float = 60.0
    redis_down_seconds: float = 5.0
    redis_outage_seconds: float = 20.0
    gpu_kills: int = 3
    freeze_max_seconds: float = 180.0
    settle_seconds: float = 420.0
    max_n: int = 4
    allow_4k: bool = True
    accounts: int = 3
    credits: int = 1_000_000


QUICK = Plan(
    jobs=10,
    submit_seconds=5.0,
    outage_seconds=5.0,
    redis_down_seconds=3.0,
    redis_outage_seconds=5.0,
    gpu_kills=1,
    # Only spent when something is stuck; a loaded 2-core machine needs the margin.
    settle_seconds=120.0,
    max_n=2,
    allow_4k=False,
)


@dataclass
class Context:
    """What a fault function works with."""

    pool: ChaosPool
    plan: Plan
    submitter: Submitter
    monitor: Monitor
    started: float = field(default_factory=time.monotonic)
    events: list[dict[str, Any]] = field(default_factory=list)

    def event(self, text: str) -> None:
        """Log a step of the scenario (kept in the report, echoed to stderr)."""
        offset = round(time.monotonic() - self.started, 1)
        self.events.append({"t": offset, "event": text})
        print(f"  [{offset:6.1f} s] {text}", file=sys.stderr, flush=True)

    def wait_for_processing(self, *, timeout: float = 120) -> list[str]:
        """Jobs processing right now, once there are any and their batch has run for a
        moment (empty if none came within ``timeout``)."""
        if not wait_until(lambda: self.monitor.in_status(JobStatus.PROCESSING), timeout=timeout):
            return []
        time.sleep(1.0)  # into the batch
        return self.monitor.in_status(JobStatus.PROCESSING)

    def wait_accepted(self, fraction: float, *, timeout: float = 120) -> None:
        """Until this fraction of the planned jobs was answered 202."""
        wanted = fraction * len(self.submitter.submissions)
        wait_until(lambda: len(self.submitter.accepted()) >= wanted, timeout=timeout)


Fault = Callable[[Context], dict[str, Any]]


def _baseline(ctx: Context) -> dict[str, Any]:
    return {}


def _gpu_kill(ctx: Context) -> dict[str, Any]:
    for _ in range(ctx.plan.gpu_kills):
        processing = ctx.wait_for_processing()
        if not processing:
            ctx.event("no job was processing: kill skipped")
            continue
        name = ctx.pool.busiest_gpu_worker()
        ctx.event(f"SIGKILL {name} ({len(processing)} jobs processing)")
        ctx.pool.kill_and_restart(name)
        ctx.pool.wait_ready(name)
        ctx.event(f"{name} restarted and ready")
    return {}


def _gpu_freeze(ctx: Context) -> dict[str, Any]:
    if not ctx.wait_for_processing():
        ctx.event("no job was processing: freeze skipped")
        return {}
    name = ctx.pool.busiest_gpu_worker()
    held = {j: o.attempt for j, o in ctx.monitor.latest().items() if o.status == "processing"}
    ctx.pool.signal(name, signal.SIGSTOP)
    ctx.event(f"SIGSTOP {name} ({len(held)} jobs processing)")

    def taken_over() -> bool:
        # The frozen worker's jobs can only move on under a new attempt; the other
        # worker's simply end.
        latest = ctx.monitor.latest()
        return all(
            latest[j].status in TERMINAL or latest[j].attempt != attempt
            for j, attempt in held.items()
        )

    # Past the lease at least; then until the other worker has taken over every frozen
    # job (its re-dispatched message queues behind the backlog), within a bound.
    time.sleep(ctx.pool.timings.lease_seconds)
    done = wait_until(taken_over, timeout=ctx.plan.freeze_max_seconds)
    ctx.pool.signal(name, signal.SIGCONT)
    ctx.event(f"SIGCONT {name}" + ("" if done else ": not every job was taken over"))
    return {"frozen_worker": name, "processing_at_freeze": held}


class _AofProbe:
    """Counts up one key as fast as Redis answers; the last acknowledged value, against
    the value after a restart, is what the AOF lost of acknowledged writes."""

    KEY = "chaos:aof-probe"

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=2)
        self.acknowledged = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> _AofProbe:
        self._client.delete(self.KEY)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while True:
                self.acknowledged = int(self._client.incr(self.KEY))
        except (redis.RedisError, OSError):
            return  # Redis went away: the probe ends with it

    def lost(self, client: redis.Redis) -> dict[str, int]:
        """The last acknowledged count and the count Redis holds now."""
        self._thread.join(timeout=10)
        after = int(client.get(self.KEY) or 0)
        return {"acknowledged": self.acknowledged, "after_restart": after}


def _redis_fault(kill: bool) -> Fault:
    def fault(ctx: Context) -> dict[str, Any]:
        processing = ctx.wait_for_processing()
        probe = _AofProbe(ctx.pool.redis_url).start()
        time.sleep(0.5)
        before = ctx.pool.redis_info()
        ctx.pool.stop_redis(kill=kill)
        how = "SIGKILL" if kill else "SIGTERM"
        ctx.event(f"Redis stopped with {how} ({len(processing)} jobs processing)")
        time.sleep(ctx.plan.redis_down_seconds)
        ctx.pool.start_redis()
        ctx.event("Redis started again from its AOF")
        probed = probe.lost(ctx.pool.redis())
        return {
            # The write in flight at the stop may be kept without its reply having arrived:
            # that is not a loss, hence the floor at zero.
            "aof_probe": {
                **probed,
                "lost": max(0, probed["acknowledged"] - probed["after_restart"]),
            },
            "aof_before_stop": {
                k: before.get(k)
                for k in ("aof_enabled", "aof_last_write_status", "aof_delayed_fsync")
            },
        }

    return fault


def _s3_outage(mode: ProxyMode) -> Fault:
    def fault(ctx: Context) -> dict[str, Any]:
        processing = ctx.wait_for_processing()
        ctx.pool.set_s3(mode)
        ctx.event(
            f"S3 {mode.value} for {ctx.plan.outage_seconds:.0f} s "
            f"({len(processing)} jobs processing)"
        )
        time.sleep(ctx.plan.outage_seconds)
        ctx.pool.set_s3(ProxyMode.FORWARD)
        ctx.event("S3 back")
        return {"s3_mode": mode.value}

    return fault


def _redis_outage(ctx: Context) -> dict[str, Any]:
    # While clients are still posting: every POST must get 202 or 503, never 500.
    ctx.wait_accepted(0.3)
    ctx.pool.stop_redis(kill=False)
    ctx.event(f"Redis down for {ctx.plan.redis_outage_seconds:.0f} s, POSTs in flight")
    time.sleep(ctx.plan.redis_outage_seconds)
    ctx.pool.start_redis()
    ctx.event("Redis started again from its AOF")
    return {}


def _webhook_outage(ctx: Context) -> dict[str, Any]:
    # From the first finished job on, deliveries fail.
    wait_until(lambda: ctx.monitor.in_status(JobStatus.SUCCEEDED), timeout=120)
    ctx.pool.receiver.stop()
    ctx.event(f"webhook receiver down for {ctx.plan.outage_seconds:.0f} s")
    time.sleep(ctx.plan.outage_seconds)
    ctx.pool.receiver.start()
    ctx.event("webhook receiver back")
    return {}


def _api_kill(ctx: Context) -> dict[str, Any]:
    ctx.wait_accepted(0.3)
    ctx.pool.kill_and_restart("api")
    ctx.event(f"SIGKILL api after {len(ctx.submitter.accepted())} 202s; restarted")
    ready = wait_until(lambda: answers(f"{ctx.pool.base_url}/readyz"), timeout=60)
    ctx.event("api ready" if ready else "api not ready after 60 s")
    return {}


SCENARIOS: dict[str, Fault] = {
    "baseline": _baseline,
    "gpu-kill": _gpu_kill,
    "gpu-freeze": _gpu_freeze,
    "redis-restart": _redis_fault(kill=False),
    "redis-kill": _redis_fault(kill=True),
    "redis-outage": _redis_outage,
    "s3-refuse": _s3_outage(ProxyMode.REFUSE),
    "s3-hang": _s3_outage(ProxyMode.HANG),
    "webhook-outage": _webhook_outage,
    "api-kill": _api_kill,
}
QUICK_SCENARIOS = ("gpu-kill", "redis-restart")


def _webhooks_settled(ctx: Context, names: set[str]) -> bool:
    """Every terminal job that asked for a webhook got one carrying its final status."""
    delivered = {
        (d.request_id, d.status)
        for d in ctx.pool.receiver.received()
        if d.account in names and d.verified
    }
    latest = ctx.monitor.latest()
    return all(
        (s.request_id, latest[s.request_id].status) in delivered
        for s in ctx.submitter.accepted()
        if "webhookUrl" in s.spec.body
        and s.request_id in latest
        and latest[s.request_id].status in TERMINAL
    )


def _frozen_jobs(pool: ChaosPool, worker: str, held: dict[str, str]) -> dict[str, Any]:
    """How each job processing at the freeze ended, and whether the frozen worker, once
    resumed, was told its attempt was stale (its lease renewal refused)."""
    log = pool.log_text(worker)
    after = {}
    for job_id, attempt in held.items():
        status, final = pool.redis().hmget(keys.job(job_id), "status", "attempt")
        after[job_id] = {
            "status": status,
            "attempt_at_freeze": attempt,
            "final_attempt": final,
            "stale_attempt_refused": any(
                job_id in line
                for line in log.splitlines()
                if "stopping work on" in line or "lost the lease on" in line
            ),
        }
    return after


def run_scenario(pool: ChaosPool, name: str, plan: Plan, *, seed: int) -> dict[str, Any]:
    """One scenario on a running pool, with fresh accounts."""
    print(f"scenario {name}", file=sys.stderr, flush=True)
    tag = f"{name}-{seed}"
    accounts = []
    for index in range(plan.accounts):
        new = pool.accounts().create_key(f"{tag}-{index}")
        pool.accounts().add_credits(new.account, plan.credits)
        url = pool.receiver.add_account(new.account, new.webhook_secret)
        accounts.append(Account(new.account, new.api_key, url, plan.credits))
    specs = plan_jobs(
        plan.jobs,
        accounts,
        tag=tag,
        spread_seconds=plan.burst_seconds if name == "api-kill" else plan.submit_seconds,
        reference_urls=pool.image_host.urls(),
        rng=random.Random(seed),
        max_n=plan.max_n,
        allow_4k=plan.allow_4k,
    )
    for worker in GPU_WORKERS:
        pool.wait_ready(worker)
    submitter = Submitter(pool.base_url, specs).start()
    monitor = Monitor(pool.redis(), submitter).start()
    ctx = Context(pool, plan, submitter, monitor)
    extra = SCENARIOS[name](ctx)
    submitter.wait()
    ctx.event(f"fault over, {len(submitter.accepted())} jobs accepted; settling")
    names = {a.name for a in accounts}
    wait_until(
        lambda: monitor.all_terminal() and _webhooks_settled(ctx, names),
        timeout=plan.settle_seconds,
        interval=1.0,
    )
    # A stale attempt that could still finish a job would do so within a lease or two.
    time.sleep(2 * pool.timings.lease_seconds)
    monitor.stop()
    submitter.close()
    ctx.event("settled" if monitor.all_terminal() else "bound reached")
    figures = evaluate(
        base_url=pool.base_url,
        client=pool.redis(),
        accounts=accounts,
        submitter=submitter,
        monitor=monitor,
        deliveries=[d for d in pool.receiver.received() if d.account in names],
        now_ms=int(time.time() * 1000),
    )
    held = extra.get("processing_at_freeze", {})
    if held:
        extra["frozen_jobs_after"] = _frozen_jobs(pool, extra["frozen_worker"], held)
    return {**figures, **extra, "events": ctx.events}


def run(
    *,
    scenarios: list[str],
    plan: Plan,
    timings: Timings,
    shared_pool: bool,
    workdir: Path,
    seed: int = 1,
) -> dict[str, Any]:
    """Run the scenarios; returns the report (configuration and figures)."""
    started = datetime.now(UTC)
    results: dict[str, Any] = {}
    pool: ChaosPool | None = None
    try:
        for index, name in enumerate(scenarios):
            if pool is None:
                pool = ChaosPool(workdir / ("pool" if shared_pool else name), timings)
                pool.start()
            results[name] = run_scenario(pool, name, plan, seed=seed + index)
            if not shared_pool:
                pool.stop()
                pool = None
    finally:
        if pool is not None:
            pool.stop()
    return {
        "started": started.isoformat(timespec="seconds"),
        "seconds": round((datetime.now(UTC) - started).total_seconds(), 1),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "timings": dataclasses.asdict(timings),
        "plan": dataclasses.asdict(plan),
        "pool": "shared" if shared_pool else "fresh per scenario",
        "scenarios": results,
    }


def _bounds(report: dict[str, Any]) -> str:
    timings, plan = report["timings"], report["plan"]
    return (
        f"Bounds: lease {timings['lease_seconds']} s, tick {timings['tick_seconds']} s, "
        f"broker visibility {timings['broker_visibility_timeout']} s, job timeout "
        f"{timings['job_timeout_seconds']} s, outbox grace {timings['dispatch_grace_seconds']} s "
        f"and retry {timings['dispatch_retry_seconds']} s, upload retry "
        f"{timings['upload_retry_seconds']} s, webhook backoff "
        f"{timings['webhook_backoff_base_seconds']}-{timings['webhook_backoff_max_seconds']} s; "
        f"each scenario's jobs get {plan['settle_seconds']:.0f} s after the fault and the last "
        f"POST to end. {plan['jobs']} jobs per scenario, pool {report['pool']}.\n"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry; returns the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="The small run of make test.")
    parser.add_argument("--scenarios", help=f"Comma-separated, of: {', '.join(SCENARIOS)}.")
    parser.add_argument("--jobs", type=int, help="Jobs per scenario.")
    parser.add_argument("--outage", type=float, help="Seconds S3 / the receiver stay down.")
    parser.add_argument("--settle", type=float, help="A scenario's bound after its fault.")
    parser.add_argument("--shared-pool", action="store_true", help="One pool for all.")
    parser.add_argument("--workdir", type=Path, help="Keep the pools' files (logs) here.")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="Write the report here.")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    changes: dict[str, Any] = {}
    for name, value in (
        ("jobs", args.jobs),
        ("outage_seconds", args.outage),
        ("settle_seconds", args.settle),
    ):
        if value is not None:
            changes[name] = value
    plan = dataclasses.replace(plan, **changes)
    default = QUICK_SCENARIOS if args.quick else tuple(SCENARIOS)
    scenarios = args.scenarios.split(",") if args.scenarios else list(default)
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="xsd-chaos-") as tmp:
        report = run(
            scenarios=scenarios,
            plan=plan,
            timings=Timings(),
            shared_pool=args.shared_pool or args.quick,
            workdir=args.workdir or Path(tmp),
            seed=args.seed,
        )
    print(_bounds(report))
    print(markdown_table(report["scenarios"]))
    if args.json:
        args.json.write_text(dumps(report) + "\n")
    return report


if __name__ == "__main__":
    main()
