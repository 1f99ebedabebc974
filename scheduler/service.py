"""What the HTTP shim asks of the scheduler: one method per API operation.

The shim authenticates, validates and shapes HTTP; everything with state (debits, records,
queues, tenancy) happens here, so the same operations serve the CLI and tests.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import string
from collections.abc import Iterator
from typing import Any

import redis

from storage import ObjectStore, StorageError

from . import metrics
from .errors import Conflict, InvalidRequest, NotFound
from .jobs.inputs import MAX_SEED
from .jobs.records import JobInput, JobRecord
from .jobs.sizes import largest_pixels, parse_size, resolve
from .jobs.states import JobStatus
from .jobs.views import inlines, iso_time, public_queue, public_view, stream_view
from .net.policy import NetPolicy
from .redis.accounts import Principal
from .redis.outage import Outage
from .redis.ratelimit import RateStatus
from .runtime import Runtime
from .stages.celery_app import CPU_QUEUE, gpu_queues, job_queue, send_prepare
from .stages.lifecycle import Job, delete_job

__all__ = ["Service", "new_job_id"]

log = logging.getLogger(__name__)

_ID_ALPHABET = string.ascii_letters + string.digits


def new_job_id() -> str:
    """``req_`` and 16 random base62 characters (95 bits)."""
    return "req_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(16))


class Service:
    """API operations over one process's :class:`Runtime`."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # Whether Redis was last found out of reach (the API answers 503 meanwhile).
        self.outage = Outage("answering 503 service_unavailable")

    # -- callers and limits ----------------------------------------------------------

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller of a request with this Authorization header."""
        return self.runtime.accounts.authenticate(authorization)

    def limit(self, principal: Principal, *, write: bool) -> RateStatus:
        """Count a call against the key's limit (POSTs and reads are limited apart)."""
        settings = self.runtime.settings
        if write:
            return self.runtime.limiter.hit(
                f"post:{principal.key_id}", limit=settings.rate_limit_per_minute
            )
        return self.runtime.limiter.hit(
            f"read:{principal.key_id}", limit=settings.read_rate_limit_per_minute
        )

    # -- generations -----------------------------------------------------------------

    def _view_context(self) -> dict[str, Any]:
        """What rendering a record needs besides the record."""
        settings = self.runtime.settings
        return {
            "store": self.runtime.store,
            "base_url": settings.base_url(),
            "ttl_seconds": settings.url_ttl_seconds,
            "now_ms": self.runtime.jobs.now_ms(),
        }

    def _view(self, record: JobRecord, *, inline: bool = True) -> dict[str, Any]:
        body = public_view(record, inline=inline, **self._view_context())
        if record.status is JobStatus.QUEUED:
            body["queue"] = self._queue_place(record)
        return body

    def _queue_place(self, record: JobRecord) -> dict[str, Any]:
        """Where a queued job waits; unknown until the prepare stage routed it."""
        place = None
        if record.prepared_ms is not None:
            place = self.runtime.jobs.queue_place(record.id, job_queue(record))
        if place is None:
            return public_queue(None, None)
        return public_queue(place.position, place.start_ms)

    def _check_inline_size(self, job: JobInput) -> None:
        """Refuse, before any debit, a b64_json request whose images would make responses
        (and the memory that builds them) unbounded."""
        limit = self.runtime.settings.b64_max_pixels
        pixels = job.image_count * largest_pixels(parse_size(job.size))
        if job.response_format == "b64_json" and pixels > limit:
            raise InvalidRequest(
                f'responseFormat "b64_json" carries at most {limit:,} pixels in all (images x '
                f"width x height, e.g. four 2K squares or one 4K image); this request asks for "
                f'{pixels:,}. Use responseFormat "url", or fewer or smaller images.',
                param="responseFormat",
            )

    def submit(
        self, principal: Principal, job: JobInput, *, idempotency_key: str | None
    ) -> tuple[dict[str, Any], bool]:
        """Debit, record and queue a generation. Returns its public record and whether it
        is the replay of an earlier request with the same Idempotency-Key."""
        settings, jobs = self.runtime.settings, self.runtime.jobs
        self._check_inline_size(job)
        seed = job.seed if job.seed is not None else secrets.randbelow(MAX_SEED + 1)
        size = resolve(parse_size(job.size), job.aspect_ratio, has_references=bool(job.references))
        width, height = size if size else (None, None)
        now = jobs.now_ms()
        record = JobRecord(
            id=new_job_id(),
            account=principal.account,
            status=JobStatus.QUEUED,
            model=job.model,
            prompt=job.prompt,
            email=job.end_user_email,
            created_ms=now,
            references=job.references,
            size=job.size,
            aspect_ratio=job.aspect_ratio,
            n=job.n,
            image_count=job.image_count,
            seed=seed,
            guidance_scale=job.guidance_scale,
            watermark=job.watermark,
            response_format=job.response_format,
            sequential=job.sequential,
            width=width,
            height=height,
            charged=job.cost,
            webhook_url=job.webhook_url,
        )
        digest = hashlib.sha256(idempotency_key.encode()).hexdigest() if idempotency_key else None
        job_id, replayed = jobs.accept(
            record,
            deadline_ms=now + settings.job_timeout_seconds * 1000,
            purge_ms=now + settings.record_retention_seconds * 1000,
            dispatch_at_ms=now + int(settings.dispatch_grace_seconds * 1000),
            idempotency_digest=digest,
            fingerprint=job.fingerprint(),
            idempotency_ttl=settings.idempotency_ttl_seconds,
        )
        if not replayed:
            metrics.XTOKENS_DEBITED.inc(job.cost)
            self._dispatch(job_id, now)
        stored = jobs.get(job_id)
        if stored is None:
            raise Conflict(
                f"This Idempotency-Key created {job_id}, which has since been deleted.",
                param="Idempotency-Key",
            )
        return self._view(stored), replayed

    def _dispatch(self, job_id: str, now_ms: int) -> None:
        """Hand an accepted job to the broker. The job is in the outbox already: if this
        fails (or the process dies first) the beat's tick sends it once the grace is over,
        so the client still gets its 202 and the job still runs."""
        retry_ms = int(self.runtime.settings.dispatch_retry_seconds * 1000)
        try:
            send_prepare(job_id)
            self.runtime.jobs.resend_at(job_id, now_ms + retry_ms)
        except Exception as exc:
            log.warning("could not queue %s now (%r); the outbox will", job_id, exc)

    def get(self, principal: Principal, job_id: str) -> dict[str, Any]:
        """One generation's public record."""
        return self._view(self.runtime.jobs.get_owned(principal.account, job_id))

    def read(self, principal: Principal, job_id: str) -> dict[str, Any] | Iterator[bytes]:
        """What ``GET /v1/generations/:id`` answers: the record, or, when it inlines its
        images, the record's JSON as a stream that encodes one image at a time."""
        record = self.runtime.jobs.get_owned(principal.account, job_id)
        if not (inlines(record) and record.images):
            return self._view(record)
        return stream_view(record, **self._view_context())

    def watch(self, principal: Principal, job_id: str) -> dict[str, Any]:
        """The record as ``GET /v1/generations/:id/events`` sends it: as a poll returns it,
        but with a ``b64_json`` record's images as signed URLs (an event is one line)."""
        return self._view(self.runtime.jobs.get_owned(principal.account, job_id), inline=False)

    def list(
        self, principal: Principal, *, email: str | None, limit: int, cursor: str | None
    ) -> dict[str, Any]:
        """A page of generations, newest first, optionally of one end user. Images are
        listed as signed URLs, b64_json ones too: a page of inline images would be
        unbounded."""
        ids, next_cursor = self.runtime.jobs.list_ids(
            principal.account, email, limit=limit, cursor=cursor
        )
        records = [r for r in (self.runtime.jobs.get(i) for i in ids) if r is not None]
        return {
            "data": [self._view(r, inline=False) for r in records],
            "nextCursor": next_cursor,
        }

    def cancel(self, principal: Principal, job_id: str) -> dict[str, Any]:
        """Cancel a generation: a queued one is refunded in full; a processing one stops at
        its worker's next denoising step and stays charged, since a worker claimed it."""
        record = self.runtime.jobs.get_owned(principal.account, job_id)
        # A queued job may be claimed while we cancel it; statuses only move forward, so
        # the second look sees it processing or terminal.
        for _ in range(2):
            if record.status.is_terminal():
                break
            if Job.as_read(self.runtime, record).cancel().ok:
                return self.get(principal, job_id)
            record = self.runtime.jobs.get_owned(principal.account, job_id)
        raise Conflict(
            f"{job_id} is already {record.status.value}; only queued or processing "
            "generations can be cancelled.",
            param="id",
        )

    def delete(self, principal: Principal, job_id: str) -> dict[str, Any]:
        """Delete a generation's record and images. A queued one is refunded; a processing
        one stops at its worker's next denoising step and stays charged."""
        record = self.runtime.jobs.get_owned(principal.account, job_id)
        refund = delete_job(self.runtime, record)
        return {"requestId": job_id, "deleted": True, "refundedXTokens": refund}

    def erase_end_user(self, principal: Principal, email: str) -> dict[str, Any]:
        """Delete every generation of one end user; usage counters are kept for audit."""
        deleted = refunded = 0
        while True:
            ids, _ = self.runtime.jobs.list_ids(principal.account, email, limit=100, cursor=None)
            records = [r for r in (self.runtime.jobs.get(i) for i in ids) if r is not None]
            if not records:
                break
            for record in records:
                try:
                    refunded += delete_job(self.runtime, record)
                except StorageError as exc:
                    raise Conflict(
                        f"Erasure stopped at {record.id}: its images could not be deleted. "
                        "Retry the request to finish it.",
                    ) from exc
                deleted += 1
        return {"endUserEmail": email, "deleted": deleted, "refundedXTokens": refunded}

    def usage(self, principal: Principal, email: str) -> dict[str, Any]:
        """An end user's counts, spend and policy violations."""
        counters = self.runtime.jobs.usage(principal.account, email)
        if not counters:
            raise NotFound(f"No generations are recorded for {email}.", param="email")
        debited, refunded = counters.get("debited", 0), counters.get("refunded", 0)
        return {
            "endUserEmail": email,
            "requests": counters.get("requests", 0),
            "succeeded": counters.get("succeeded", 0),
            "failed": counters.get("failed", 0),
            "images": counters.get("images", 0),
            "xTokens": debited - refunded,
            "policyViolations": counters.get("policy_violations", 0),
        }

    def account(self, principal: Principal) -> dict[str, Any]:
        """The caller's account and balance."""
        info = self.runtime.accounts.info(principal.account)
        return {
            "account": principal.account,
            "balance": {"xTokens": info["balance"]},
            "createdAt": iso_time(int(info["created_ms"])),
        }

    # -- service-wide ----------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        """Public model aliases."""
        return self.runtime.registry.describe()

    def model_aliases(self) -> list[str]:
        """Just the aliases."""
        return self.runtime.registry.aliases()

    def queue_names(self) -> list[str]:
        """Every Celery queue jobs wait in: the CPU queue and each model's GPU queues."""
        return [CPU_QUEUE, *gpu_queues(self.model_aliases())]

    def queue_length(self, queue: str) -> int:
        """How many messages wait in one queue."""
        return int(self.runtime.redis.llen(queue))

    def in_flight(self) -> dict[str, int]:
        """Images claimed by GPU workers and not finished, for every GPU queue."""
        counts = self.runtime.jobs.in_flight()
        return {queue: counts.get(queue, 0) for queue in gpu_queues(self.model_aliases())}

    @property
    def net_policy(self) -> NetPolicy:
        """Which URLs a request may name (references, webhooks)."""
        return self.runtime.net_policy

    @property
    def max_body_bytes(self) -> int:
        """The largest request body the API reads."""
        return self.runtime.settings.max_body_bytes

    @property
    def base_url(self) -> str:
        """The API's public base URL, without a trailing slash."""
        return self.runtime.settings.base_url()

    @property
    def object_store(self) -> ObjectStore:
        """Where images are stored (signed local files are served from it)."""
        return self.runtime.store

    def ready(self) -> bool:
        """Whether Redis answers (the API cannot accept work without it)."""
        try:
            answered = bool(self.runtime.redis.ping())
        except redis.RedisError as exc:
            self.outage.failed(exc)
            return False
        self.outage.succeeded()
        return answered
