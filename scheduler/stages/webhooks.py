"""Webhook delivery: signed POSTs of the public record, retried with exponential backoff.

Retries are scheduled in a Redis sorted set that the beat's tick drains, not as Celery
countdowns: a Redis broker holds countdown messages unacknowledged inside a worker, and
ones longer than the visibility timeout get delivered twice. Delivery is at least once:
receivers deduplicate on ``requestId`` (the ``X-XMode-Delivery`` header names the attempt).
"""

from __future__ import annotations

import json
import logging
import random

from .. import metrics
from ..errors import FetchFailed, UnsafeURL
from ..jobs.records import JobRecord
from ..jobs.states import WebhookState
from ..jobs.views import public_view
from ..net.guard import post
from ..net.signing import signature_headers
from ..redis import keys
from ..runtime import Runtime

__all__ = ["deliver", "backoff_seconds", "render_body"]

log = logging.getLogger(__name__)

# Room for the record around its images (prompt, input, ids) when sizing a body.
_ENVELOPE_BYTES = 64 * 1024


def backoff_seconds(attempt: int, *, base: float, cap: float) -> float:
    """Delay before retry number ``attempt`` (1-based): doubling from ``base`` up to ``cap``,
    with jitter so receivers that come back are not hit by every sender at once."""
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay * random.uniform(0.75, 1.0)


def _inline_fits(record: JobRecord, limit: int) -> bool:
    """Whether a b64_json record's images, base64-encoded, leave its body within ``limit``
    (sizes unknown count as too large)."""
    sizes = [image.size for image in record.images if image.key is not None]
    if any(size is None for size in sizes):
        return False
    encoded = sum(4 * -(-size // 3) for size in sizes if size is not None)
    return encoded + _ENVELOPE_BYTES <= limit


def render_body(runtime: Runtime, job_id: str) -> bytes | None:
    """The exact bytes a delivery of this job sends (None when there is nothing to send):
    the record as GET shows it, except that inline images which would take the body past
    ``XSD_WEBHOOK_MAX_BODY_BYTES`` are sent as signed URLs."""
    record = runtime.jobs.get(job_id)
    if record is None:
        return None
    view = public_view(
        record,
        store=runtime.store,
        base_url=runtime.settings.base_url(),
        ttl_seconds=runtime.settings.url_ttl_seconds,
        now_ms=runtime.jobs.now_ms(),
        inline=_inline_fits(record, runtime.settings.webhook_max_body_bytes),
    )
    return json.dumps(view, separators=(",", ":")).encode()


def deliver(runtime: Runtime, job_id: str) -> None:
    """One delivery attempt; schedules the next one when it fails."""
    settings = runtime.settings
    lock = runtime.redis.set(
        keys.webhook_lock(job_id), "1", nx=True, px=int(settings.webhook_timeout_seconds * 2000)
    )
    if not lock:
        return  # another worker is delivering this job right now
    try:
        with metrics.WEBHOOK_DELIVERY.time():
            _attempt(runtime, job_id)
    finally:
        runtime.redis.delete(keys.webhook_lock(job_id))


def _attempt(runtime: Runtime, job_id: str) -> None:
    settings, jobs = runtime.settings, runtime.jobs
    record = jobs.get(job_id)
    if record is None or not record.webhook_url or not record.status.is_terminal():
        jobs.take_due(keys.WEBHOOKS_DUE, job_id)
        return
    if WebhookState.read(record.webhook_state).is_final():
        jobs.take_due(keys.WEBHOOKS_DUE, job_id)
        return
    body = render_body(runtime, job_id)
    assert body is not None
    attempt = record.webhook_attempts + 1
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "xsd-webhooks/1",
        "X-XMode-Delivery": f"{job_id}.{attempt}",
        **signature_headers(runtime.accounts.webhook_secret(record.account), body),
    }
    try:
        status = post(
            record.webhook_url,
            body,
            runtime.net_policy,
            headers=headers,
            timeout=settings.webhook_timeout_seconds,
        )
        outcome = f"http {status}"
        delivered = 200 <= status < 300
    except UnsafeURL as exc:
        # The host now resolves somewhere private: never retry towards it.
        log.warning("webhook of %s refused: %s", job_id, exc)
        metrics.WEBHOOK_ATTEMPTS.labels("refused").inc()
        metrics.WEBHOOK_GIVE_UPS.inc()
        jobs.set_webhook_state(job_id, attempts=attempt, state=WebhookState.GAVE_UP)
        jobs.take_due(keys.WEBHOOKS_DUE, job_id)
        return
    except FetchFailed as exc:
        outcome, delivered = str(exc), False
    metrics.WEBHOOK_ATTEMPTS.labels("delivered" if delivered else "failed").inc()
    if delivered:
        jobs.set_webhook_state(job_id, attempts=attempt, state=WebhookState.DELIVERED)
        jobs.take_due(keys.WEBHOOKS_DUE, job_id)
        return
    now_ms = jobs.now_ms()
    finished_ms = record.finished_ms or now_ms
    if now_ms - finished_ms > settings.webhook_retry_seconds * 1000:
        log.warning("webhook of %s gave up after %d attempts: %s", job_id, attempt, outcome)
        metrics.WEBHOOK_GIVE_UPS.inc()
        jobs.set_webhook_state(job_id, attempts=attempt, state=WebhookState.GAVE_UP)
        jobs.take_due(keys.WEBHOOKS_DUE, job_id)
        return
    delay = backoff_seconds(
        attempt,
        base=settings.webhook_backoff_base_seconds,
        cap=settings.webhook_backoff_max_seconds,
    )
    jobs.set_webhook_state(job_id, attempts=attempt, state=WebhookState.RETRYING, detail=outcome)
    jobs.schedule(keys.WEBHOOKS_DUE, job_id, now_ms + int(delay * 1000))
    log.info("webhook of %s failed (%s); retry %d in %.1f s", job_id, outcome, attempt, delay)
