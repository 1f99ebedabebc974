"""What a chaos scenario did to the jobs, the money and the webhooks, and its table.

Definitions (each figure counts jobs answered 202 in the scenario):

- **stuck**: not terminal when the scenario's bound ran out.
- **lost**: answered 202, then 404; or stuck with nothing left that could move it: no
  Celery message naming it in any queue or in kombu's ``unacked`` hash, and no live lease.
- **finished twice**: more than one terminal transition, seen as a terminal record that
  changed afterwards, webhooks carrying two different terminal statuses, or the finish
  script's per-end-user counters (each job has its own end user) counting two finishes.
- **xTokens off**: (credits at the start - balance at the end) - 10 x images delivered,
  over the scenario's accounts. Stuck jobs still hold their debit, so they show here too
  (``held`` says how much).
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter, defaultdict
from typing import Any

import httpx
import redis

from scheduler.jobs.records import PRICE_PER_IMAGE
from scheduler.redis import keys

from .chaos_load import TERMINAL, Account, Monitor, Submitter
from .chaos_net import Delivery

__all__ = ["evaluate", "broker_messages", "broker_state", "markdown_table", "dumps"]

_JOB_ID = re.compile(r"req_[A-Za-z0-9]{16}")
_TASK = re.compile(r'"task": ?"([^"]+)"')


def broker_messages(client: redis.Redis, *, now: float) -> dict[str, list[str]]:
    """Where each job id appears among Celery's messages: ``<queue>:<task>`` for a queued
    message; ``unacked:<task>`` for one a worker took and has not acknowledged, with how
    long ago kombu's ``unacked_index`` says it was delivered (kombu puts it back in its
    queue once that passes the visibility timeout)."""
    found: dict[str, list[str]] = defaultdict(list)
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == "list" and not key.startswith("xsd:"):
            labelled = [(key, raw) for raw in client.lrange(key, 0, -1)]
        elif kind == "hash" and key == "unacked":
            labelled = []
            for tag, raw in client.hgetall(key).items():
                delivered = client.zscore("unacked_index", tag)
                age = "not indexed" if delivered is None else f"{now - delivered:.0f} s ago"
                labelled.append((f"unacked ({age})", raw))
        else:
            continue
        for label, raw in labelled:
            task = _TASK.search(raw)
            for job_id in set(_JOB_ID.findall(raw)):
                found[job_id].append(f"{label}:{task.group(1) if task else '?'}")
    return found


def broker_state(client: redis.Redis) -> dict[str, int]:
    """Sizes of kombu's bookkeeping, and the TTL of the mutex its restorer takes."""
    return {
        "unacked": int(client.hlen("unacked")),
        "unacked_index": int(client.zcard("unacked_index")),
        "unacked_mutex_ttl": int(client.ttl("unacked_mutex")),
    }


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def _missing_objects(http: httpx.Client, view: dict[str, Any] | None) -> int:
    """Image URLs of the record whose object is not in the store (moto checks no
    signatures, so a HEAD on the GET URL answers for the object)."""
    urls = [image["url"] for image in (view or {}).get("images", []) if "url" in image]
    return sum(http.head(url).status_code != 200 for url in urls)


def _final_view(http: httpx.Client, api_key: str, job_id: str) -> dict[str, Any] | None:
    """The record as GET shows it; None for a 404."""
    for _ in range(5):
        try:
            response = http.get(
                f"/v1/generations/{job_id}", headers={"Authorization": f"Bearer {api_key}"}
            )
        except httpx.TransportError:
            continue
        if response.status_code == 404:
            return None
        if response.status_code == 200:
            return dict(response.json())
    raise RuntimeError(f"GET {job_id} kept failing")


def evaluate(
    *,
    base_url: str,
    client: redis.Redis,
    accounts: list[Account],
    submitter: Submitter,
    monitor: Monitor,
    deliveries: list[Delivery],
    now_ms: int,
) -> dict[str, Any]:
    """The scenario's figures, and the details of every job that went wrong."""
    messages = broker_messages(client, now=now_ms / 1000)
    hooks: dict[str, list[Delivery]] = defaultdict(list)
    for delivery in deliveries:
        hooks[delivery.request_id].append(delivery)
    jobs, problems = [], []
    with httpx.Client(base_url=base_url, timeout=10) as http:
        for submission in submitter.accepted():
            assert submission.request_id is not None
            view = _final_view(http, submission.spec.account.api_key, submission.request_id)
            job = _job_figures(
                submission.request_id,
                view=view,
                missing_objects=_missing_objects(http, view),
                stored=client.hgetall(keys.job(submission.request_id)),
                usage=client.hgetall(
                    keys.usage(submission.spec.account.name, submission.spec.body["endUserEmail"])
                ),
                hooks=hooks.get(submission.request_id, []),
                wants_webhook="webhookUrl" in submission.spec.body,
                changes=len(monitor.terminal_changes(submission.request_id)),
                messages=messages.get(submission.request_id, []),
                posted_at=submission.posted_at,
                now_ms=now_ms,
            )
            jobs.append(job)
            if job["problems"]:
                problems.append(job)
    known = {s.request_id for s in submitter.accepted()}
    unknown = [
        job_id
        for account in accounts
        for job_id in client.zrange(keys.account_jobs(account.name), 0, -1)
        if job_id not in known
    ]
    return {
        "planned": len(submitter.submissions),
        "submitted": len(jobs),
        "not_accepted": dict(Counter(s.gave_up for s in submitter.submissions if s.gave_up)),
        "post_errors": dict(sum((s.errors for s in submitter.submissions), Counter())),
        "succeeded": sum(j["status"] == "succeeded" for j in jobs),
        "failed_by_code": dict(Counter(j["error"] for j in jobs if j["status"] == "failed")),
        "stuck": sum("stuck" in j["problems"] for j in jobs),
        "lost": sum("lost" in j["problems"] for j in jobs),
        "finished_twice": sum("finished twice" in j["problems"] for j in jobs),
        "images": {
            "requested": sum(j["images"] for j in jobs),
            "delivered": sum(j["delivered"] for j in jobs),
            "storage_failed": sum(j["storage_failed"] for j in jobs),
            "url_without_object": sum(j["missing_objects"] for j in jobs),
        },
        "webhooks": _webhook_figures(jobs, deliveries),
        "ledger": _ledger(client, accounts, jobs, unknown),
        "seconds_to_terminal": _latency(jobs),
        "broker": broker_state(client),
        "problem_jobs": problems,
    }


def _job_figures(
    job_id: str,
    *,
    view: dict[str, Any] | None,
    missing_objects: int,
    stored: dict[str, str],
    usage: dict[str, str],
    hooks: list[Delivery],
    wants_webhook: bool,
    changes: int,
    messages: list[str],
    posted_at: float,
    now_ms: int,
) -> dict[str, Any]:
    status = view["status"] if view else "404"
    images = view.get("images", []) if view else []
    finishes = int(usage.get("succeeded", 0)) + int(usage.get("failed", 0))
    hook_statuses = sorted({d.status for d in hooks if d.status in TERMINAL})
    problems = []
    if view is None:
        problems.append("lost")
    elif status not in TERMINAL:
        problems.append("stuck")
        lease = int(stored.get("lease_until_ms") or 0)
        if not messages and lease < now_ms:
            problems.append("lost")
    if finishes > 1 or changes or len(hook_statuses) > 1:
        problems.append("finished twice")
    final_delivered = any(d.verified and d.status == status for d in hooks)
    if wants_webhook and status in TERMINAL and not final_delivered:
        problems.append("webhook missing")
    if missing_objects:
        problems.append("image URL without object")
    finished = view.get("finishedAt") if view else None
    return {
        "requestId": job_id,
        "status": status,
        "error": (view.get("error") or {}).get("code") if view else None,
        "images": int(stored.get("image_count") or 0),
        "delivered": sum("url" in image or "b64Json" in image for image in images),
        "storage_failed": sum("error" in image for image in images),
        "missing_objects": missing_objects,
        "charged": int(stored.get("charged") or 0),
        "refunded": int(stored.get("refunded") or 0),
        "attempt": int(stored.get("attempt") or 0),
        "finishes": finishes,
        "terminal_changes": changes,
        "seconds": int(stored["finished_ms"]) / 1000 - posted_at
        if finished and stored.get("finished_ms")
        else None,
        "webhook": {
            "wanted": wants_webhook,
            "deliveries": len(hooks),
            "invalid": sum(not d.verified for d in hooks),
            "statuses": hook_statuses,
            "final_delivered": final_delivered,
        },
        "problems": problems,
        # What Redis held for a job that went wrong, to tell where it was left.
        "redis": {k: v for k, v in stored.items() if k != "prompt"} if problems else None,
        "broker_messages": messages if problems else None,
    }


def _webhook_figures(jobs: list[dict[str, Any]], deliveries: list[Delivery]) -> dict[str, int]:
    wanted = [j for j in jobs if j["webhook"]["wanted"]]
    return {
        "jobs": len(wanted),
        "deliveries": len(deliveries),
        "invalid_signatures": sum(not d.verified for d in deliveries),
        "final_state_delivered": sum(j["webhook"]["final_delivered"] for j in wanted),
        "missing": sum("webhook missing" in j["problems"] for j in jobs),
        "redelivered": sum(max(0, j["webhook"]["deliveries"] - 1) for j in wanted),
    }


def _ledger(
    client: redis.Redis, accounts: list[Account], jobs: list[dict[str, Any]], unknown: list[str]
) -> dict[str, Any]:
    start = sum(a.credits for a in accounts)
    final = sum(int(client.hget(keys.account(a.name), "balance") or 0) for a in accounts)
    delivered = sum(j["delivered"] for j in jobs)
    held = sum(j["charged"] - j["refunded"] for j in jobs if j["status"] not in TERMINAL)
    return {
        "spent": start - final,
        "images_delivered_x10": PRICE_PER_IMAGE * delivered,
        "off": start - final - PRICE_PER_IMAGE * delivered,
        "held_by_non_terminal": held,
        # Records the clients never got a 202 for (debited behind their back).
        "unknown_records": unknown,
    }


def _latency(jobs: list[dict[str, Any]]) -> dict[str, float | None]:
    seconds = sorted(j["seconds"] for j in jobs if j["seconds"] is not None)
    return {
        "p50": _percentile(seconds, 0.50),
        "p99": _percentile(seconds, 0.99),
        "max": seconds[-1] if seconds else None,
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per scenario."""
    lines = [
        "| scenario | 202 | succeeded | failed (by code) | stuck | lost | finished twice "
        "| images delivered / storage_failed | webhooks final / wanted (invalid sig) "
        "| xTokens off (held) | s to terminal p50 / p99 | POST errors retried |",
        "|---|---:|---:|---|---:|---:|---:|---|---|---|---|---|",
    ]
    for name, r in results.items():
        failed = ", ".join(f"{k} {v}" for k, v in sorted(r["failed_by_code"].items())) or "0"
        errors = ", ".join(f"{k} x{v}" for k, v in sorted(r["post_errors"].items())) or "0"
        hooks, ledger, latency = r["webhooks"], r["ledger"], r["seconds_to_terminal"]
        lines.append(
            f"| {name} | {r['submitted']}/{r['planned']} | {r['succeeded']} | {failed} "
            f"| {r['stuck']} | {r['lost']} | {r['finished_twice']} "
            f"| {r['images']['delivered']} / {r['images']['storage_failed']} "
            f"| {hooks['final_state_delivered']} / {hooks['jobs']} "
            f"({hooks['invalid_signatures']}) "
            f"| {ledger['off']} ({ledger['held_by_non_terminal']}) "
            f"| {_fmt(latency['p50'])} / {_fmt(latency['p99'])} | {errors} |"
        )
    return "\n".join(lines)


def dumps(figures: dict[str, Any]) -> str:
    """The JSON report."""
    return json.dumps(figures, indent=2, sort_keys=False, default=str)
