"""Job records in Redis: accept, claim, lease, finish, delete, list, and the fair order in
which GPU workers take the jobs of each GPU queue (weighted fair queuing by account).

Every status change takes its allowed source states from :mod:`scheduler.jobs.states`, and each
is one Lua script, so a change and its refund happen together or not at all. A worker
proves it still owns a job with the attempt number it got when it claimed it: a worker that
lost its lease can no longer finish the job, so a redelivered job completes (and refunds)
at most once.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis

from ..errors import Conflict, InsufficientBalance, InvalidRequest, NotFound
from ..redis import keys
from ..redis.scripts import Scripts
from .records import PRICE_PER_IMAGE, ImageResult, JobRecord, progress_field
from .states import (
    ClaimOutcome,
    FinishOutcome,
    JobErrorCode,
    JobStatus,
    WebhookState,
    check_transition,
    sources_of,
)

__all__ = ["Claim", "Finish", "QueuePlace", "JobStore", "ACTIVE_STATUSES"]

ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.PROCESSING)
# A pick looks at most this many waiting jobs (beyond those it takes), so a queue full of
# jobs held back by their accounts' caps costs a bounded amount of Redis time per batch.
_PICK_SCAN_LIMIT = 512
# A queue's rate of taking jobs is measured over windows this long (ms).
_RATE_WINDOW_MS = 10_000


@dataclass(frozen=True)
class Claim:
    """Outcome of a claim: ``CLAIMED`` (with the attempt), ``BUSY`` (another worker holds a
    live lease until ``lease_until_ms``), ``TERMINAL`` or ``GONE``."""

    outcome: ClaimOutcome
    attempt: int = 0
    lease_until_ms: int = 0


@dataclass(frozen=True)
class Finish:
    """Outcome of a terminal transition: ``OK`` (with the refund), ``STALE`` (the job had
    moved on or belongs to another attempt) or ``GONE`` (deleted)."""

    outcome: FinishOutcome
    refund: int = 0
    # Images in flight the job gave back to an account with a cap: room for as many more.
    freed_capped: int = 0

    @property
    def ok(self) -> bool:
        """True when this call made the transition."""
        return self.outcome is FinishOutcome.OK


@dataclass(frozen=True)
class QueuePlace:
    """Where a queued job waits: its 1-based ``position`` in its GPU queue's fair order,
    and when it should start (ms) at the queue's recent rate, None when that is unknown."""

    position: int
    start_ms: int | None


def _joined(statuses: Iterable[JobStatus]) -> str:
    return ",".join(s.value for s in statuses)


def _allowed_sources(target: JobStatus, only: Sequence[JobStatus] | None) -> str:
    """The source states for ``target``: all the state machine allows, or the subset
    ``only`` after checking each one against it."""
    if only is None:
        return _joined(sources_of(target))
    for source in only:
        check_transition(source, target)
    return _joined(only)


def _flatten(fields: dict[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


class JobStore:
    """Reads and atomic changes of job records."""

    def __init__(self, client: redis.Redis, *, clock=time.time) -> None:
        self._redis = client
        self._scripts = Scripts(client)
        self._clock = clock

    def now_ms(self) -> int:
        """The store's clock, in epoch milliseconds."""
        return int(self._clock() * 1000)

    # -- creation --------------------------------------------------------------------

    def accept(
        self,
        record: JobRecord,
        *,
        deadline_ms: int,
        purge_ms: int,
        dispatch_at_ms: int,
        idempotency_digest: str | None,
        fingerprint: str | None,
        idempotency_ttl: int,
    ) -> tuple[str, bool]:
        """Debit the account and store the queued record, atomically; the job enters the
        outbox due at ``dispatch_at_ms`` (see :meth:`resend_at`).

        Returns ``(job_id, replayed)``: with an Idempotency-Key seen before for the same
        request, the earlier job's id and True, and nothing is debited.
        """
        idem_key = keys.idempotency(record.account, idempotency_digest or "-")
        outcome, detail = self._scripts.accept(
            keys=[
                keys.account(record.account),
                keys.job(record.id),
                idem_key,
                keys.user_jobs(record.account, record.email),
                keys.account_jobs(record.account),
                keys.ACTIVE,
                keys.PURGE,
                keys.usage(record.account, record.email),
                keys.DISPATCH,
            ],
            args=[
                record.id,
                record.charged,
                fingerprint if idempotency_digest else "",
                idempotency_ttl,
                record.created_ms,
                deadline_ms,
                purge_ms,
                dispatch_at_ms,
                *_flatten(record.initial_hash()),
            ],
        )
        if outcome == "accepted":
            return detail, False
        if outcome == "replay":
            return detail, True
        if outcome == "conflict":
            raise Conflict(
                "This Idempotency-Key was already used with a different request body "
                f"(it created {detail}); use a new key for a new request.",
                param="Idempotency-Key",
            )
        if outcome == "insufficient":
            balance = int(detail)
            raise InsufficientBalance(
                f"This request costs {record.charged} xTokens and the account's balance is "
                f"{balance}.",
                balance=balance,
                cost=record.charged,
            )
        raise NotFound(f"The account {record.account!r} does not exist.")

    # -- reads -----------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        """The record, or None when there is none."""
        data = self._redis.hgetall(keys.job(job_id))
        return JobRecord.from_hash(data) if data else None

    def get_many(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        """Each job's record, None where there is none, in one round trip (a GPU worker
        reads a whole batch between two passes)."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(keys.job(job_id))
        return [JobRecord.from_hash(data) if data else None for data in pipe.execute()]

    def get_owned(self, account: str, job_id: str) -> JobRecord:
        """The record if it belongs to ``account``; another account's reads as absent."""
        record = self.get(job_id) if job_id.startswith("req_") else None
        if record is None or record.account != account:
            raise NotFound(f"No generation {job_id!r} exists for this account.", param="id")
        return record

    def list_ids(
        self, account: str, email: str | None, *, limit: int, cursor: str | None
    ) -> tuple[list[str], str | None]:
        """A page of job ids, newest first, and the cursor of the next page (None at the
        end). The cursor is the last item's (score, id), so pages stay stable while new
        jobs arrive."""
        index = keys.user_jobs(account, email) if email else keys.account_jobs(account)
        max_score: float | str = "+inf"
        after_id: str | None = None
        if cursor:
            max_score, after_id = _decode_cursor(cursor)
        ids: list[str] = []
        last: tuple[float, str] | None = None
        offset = 0
        while len(ids) < limit + 1:
            batch = self._redis.zrevrangebyscore(
                index, max_score, "-inf", start=offset, num=limit + 1, withscores=True
            )
            if not batch:
                break
            offset += len(batch)
            for member, score in batch:
                # Equal scores come in descending member order: skip up to the cursor's id.
                if after_id is not None and score == max_score and member >= after_id:
                    continue
                ids.append(member)
                if len(ids) <= limit:
                    last = (score, member)
        if len(ids) > limit and last is not None:
            return ids[:limit], _encode_cursor(*last)
        return ids, None

    def shapes(self, job_ids: Sequence[str]) -> list[tuple[str, int, int] | None]:
        """Each job's model and pixels, None for a job that is gone or not sized yet (one
        round trip)."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(keys.job(job_id), "model", "width", "height")
        return [
            (model, int(width), int(height)) if model and width and height else None
            for model, width, height in pipe.execute()
        ]

    def usage(self, account: str, email: str) -> dict[str, int]:
        """An end user's counters."""
        raw = self._redis.hgetall(keys.usage(account, email))
        return {name: int(value) for name, value in raw.items()}

    def due(self, zset: str, *, now_ms: int, limit: int = 200) -> list[str]:
        """Members of a time-scored set whose time has come."""
        return list(self._redis.zrangebyscore(zset, "-inf", now_ms, start=0, num=limit))

    def take_due(self, zset: str, job_id: str) -> bool:
        """Remove one due member; True for exactly one of several concurrent callers."""
        return bool(self._redis.zrem(zset, job_id))

    def schedule(self, zset: str, job_id: str, at_ms: int) -> None:
        """(Re)schedule a member at a time."""
        self._redis.zadd(zset, {job_id: at_ms})

    # -- dispatch --------------------------------------------------------------------

    def resend_at(self, job_id: str, at_ms: int) -> None:
        """The outbox sends the job again at ``at_ms`` unless a worker claims it first (its
        message was just sent, or it must wait for something). A job claimed meanwhile has
        left the outbox and stays out."""
        self._redis.zadd(keys.DISPATCH, {job_id: at_ms}, xx=True)

    def count_dispatch(self, job_id: str) -> int:
        """Count one more sending of a job by the outbox; returns how many there were."""
        return int(self._redis.hincrby(keys.job(job_id), "dispatches", 1))

    # -- worker side -----------------------------------------------------------------

    def claim(self, job_id: str, *, lease_ms: int) -> Claim:
        """Claim a given job for processing; see :class:`Claim`. Workers take the fairest
        jobs of a queue with :meth:`pick`, which claims each the same way."""
        reply, detail = self._scripts.claim(
            keys=[keys.job(job_id), keys.LEASES, keys.DISPATCH, keys.INFLIGHT],
            args=[
                self.now_ms(),
                lease_ms,
                _allowed_sources(JobStatus.PROCESSING, None),
                job_id,
                keys.FAIR_PREFIX,
            ],
        )
        outcome = ClaimOutcome(reply)
        if outcome is ClaimOutcome.CLAIMED:
            return Claim(outcome, attempt=int(detail))
        if outcome is ClaimOutcome.BUSY:
            return Claim(outcome, lease_until_ms=int(detail))
        return Claim(outcome)

    def pick(self, queue: str, wanted: int, *, lease_ms: int) -> list[tuple[str, int]]:
        """Claim up to ``wanted`` of the jobs waiting for GPU queue ``queue``, fairest first
        (lowest finish tag; jobs of an account at its in-flight cap are skipped and keep
        their place), as with :meth:`claim`. Returns ``(job id, attempt)`` pairs."""
        reply = self._scripts.pick(
            keys=[
                keys.fair_queue(queue),
                keys.fair_clock(queue),
                keys.LEASES,
                keys.DISPATCH,
                keys.INFLIGHT,
            ],
            args=[
                self.now_ms(),
                lease_ms,
                _allowed_sources(JobStatus.PROCESSING, None),
                wanted,
                keys.job(""),
                keys.account(""),
                keys.FAIR_PREFIX,
                _PICK_SCAN_LIMIT + wanted,
                _RATE_WINDOW_MS,
            ],
        )
        return [(reply[i], int(reply[i + 1])) for i in range(0, len(reply), 2)]

    def enqueue(self, record: JobRecord, queue: str, fields: dict[str, str]) -> bool:
        """Set ``fields`` (the prepare stage's results) on a job that is still queued and
        put it in the fair order of GPU queue ``queue``; a job already there keeps its
        place. False when the job is no longer queued."""
        return bool(
            self._scripts.enqueue(
                keys=[
                    keys.job(record.id),
                    keys.fair_queue(queue),
                    keys.fair_clock(queue),
                    keys.fair_tags(queue),
                    keys.account(record.account),
                ],
                args=[record.id, queue, *_flatten(fields)],
            )
        )

    def requeue(self, job_id: str, queue: str) -> bool:
        """Put a processing job whose lease lapsed back at the front of its fair queue, for
        a live worker to take over; False when it is not such a job."""
        return bool(
            self._scripts.requeue(
                keys=[keys.job(job_id), keys.fair_queue(queue), keys.fair_clock(queue)],
                args=[job_id, self.now_ms(), queue],
            )
        )

    def queue_place(self, job_id: str, queue: str) -> QueuePlace | None:
        """Where a job waits in GPU queue ``queue``; None when it is not waiting there."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrank(keys.fair_queue(queue), job_id)
        pipe.hget(keys.fair_clock(queue), "rate")
        rank, rate = pipe.execute()
        if rank is None:
            return None
        position = int(rank) + 1
        per_second = float(rate) if rate else 0.0
        if per_second <= 0:
            return QueuePlace(position, None)
        return QueuePlace(position, self.now_ms() + int(position * 1000 / per_second))

    def in_flight(self) -> dict[str, int]:
        """Images in flight per GPU queue."""
        counts = self._redis.hgetall(keys.INFLIGHT)
        return {
            field.removeprefix("queue:"): int(value)
            for field, value in counts.items()
            if field.startswith("queue:")
        }

    def renew(self, job_id: str, attempt: int, *, lease_ms: int) -> bool:
        """Extend the lease of a job this attempt still owns."""
        return bool(
            self._scripts.renew(
                keys=[keys.job(job_id), keys.LEASES],
                args=[attempt, self.now_ms() + lease_ms, job_id],
            )
        )

    def not_owned(self, held: dict[str, int]) -> set[str]:
        """Of the jobs ``held`` (id -> the attempt this worker claimed), those it no longer
        owns: cancelled, failed, deleted, or taken over under a newer attempt. One round
        trip for all of them."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in held:
            pipe.hmget(keys.job(job_id), "status", "attempt")
        replies = pipe.execute()
        return {
            job_id
            for (job_id, attempt), (status, stored) in zip(held.items(), replies, strict=True)
            if status != JobStatus.PROCESSING.value or stored != str(attempt)
        }

    def record_progress(self, progress: Sequence[tuple[str, int, int, int]]) -> int:
        """Write the denoising progress of several jobs, each ``(job id, attempt, steps
        done, steps total)``, in one round trip; a job that attempt no longer owns is left
        alone. Returns how many were written."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id, attempt, done, total in progress:
            self._scripts.progress(
                keys=[keys.job(job_id)],
                args=[attempt, progress_field(attempt, done, total)],
                client=pipe,
            )
        return sum(int(written) for written in pipe.execute())

    def succeed(
        self,
        record: JobRecord,
        attempt: int,
        images: Sequence[ImageResult],
        *,
        webhook_at_ms: int | None,
    ) -> Finish:
        """processing -> succeeded; images that could not be stored are refunded."""
        delivered = sum(1 for image in images if image.key is not None)
        fields = {"images": json.dumps([image.to_json() for image in images])}
        return self._finish(
            record,
            target=JobStatus.SUCCEEDED,
            only=None,
            attempt=attempt,
            cost=PRICE_PER_IMAGE * delivered,
            delivered=delivered,
            webhook_at_ms=webhook_at_ms,
            policy_violation=False,
            fields=fields,
        )

    def fail(
        self,
        record: JobRecord,
        code: JobErrorCode,
        message: str,
        *,
        attempt: int | None = None,
        only: Sequence[JobStatus] | None = None,
        cost: int = 0,
        webhook_at_ms: int | None,
    ) -> Finish:
        """-> failed with ``{code, message}``, refunding everything charged beyond ``cost``
        (0 but for a job cancelled after a worker claimed it). ``attempt`` restricts the
        change to the worker that owns the job; ``only`` restricts the source states."""
        error = json.dumps({"code": code.value, "message": message})
        return self._finish(
            record,
            target=JobStatus.FAILED,
            only=only,
            attempt=attempt,
            cost=cost,
            delivered=0,
            webhook_at_ms=webhook_at_ms,
            policy_violation=code is JobErrorCode.CONTENT_POLICY,
            fields={"error": error},
        )

    def _finish(
        self,
        record: JobRecord,
        *,
        target: JobStatus,
        only: Sequence[JobStatus] | None,
        attempt: int | None,
        cost: int,
        delivered: int,
        webhook_at_ms: int | None,
        policy_violation: bool,
        fields: dict[str, str],
    ) -> Finish:
        reply = self._scripts.finish(
            keys=[
                keys.job(record.id),
                keys.account(record.account),
                keys.ACTIVE,
                keys.usage(record.account, record.email),
                keys.WEBHOOKS_DUE,
                keys.LEASES,
                keys.DISPATCH,
                keys.INFLIGHT,
            ],
            args=[
                _allowed_sources(target, only),
                "" if attempt is None else attempt,
                self.now_ms(),
                target.value,
                cost,
                delivered,
                "" if webhook_at_ms is None or not record.webhook_url else webhook_at_ms,
                int(policy_violation),
                keys.FAIR_PREFIX,
                *_flatten(fields),
            ],
        )
        outcome = FinishOutcome(reply[0])
        if outcome is not FinishOutcome.OK:
            return Finish(outcome)
        return Finish(outcome, refund=int(reply[1]), freed_capped=int(reply[2]))

    def set_webhook_state(
        self, job_id: str, *, attempts: int, state: WebhookState, detail: str = ""
    ) -> None:
        """Record the webhook's delivery progress (not part of the public record), with
        ``detail`` (the last attempt's outcome) after the state when given."""
        self._redis.hset(
            keys.job(job_id),
            mapping={"webhook_attempts": attempts, "webhook_state": state.stored(detail)},
        )

    # -- removal ---------------------------------------------------------------------

    def delete(self, record: JobRecord) -> int:
        """Delete the record and its index entries; returns the refund (non-zero only for a
        job still queued: once a worker claimed it, it is charged)."""
        outcome, detail = self._scripts.delete(
            keys=[
                keys.job(record.id),
                keys.account(record.account),
                keys.user_jobs(record.account, record.email),
                keys.account_jobs(record.account),
                keys.ACTIVE,
                keys.PURGE,
                keys.usage(record.account, record.email),
                keys.WEBHOOKS_DUE,
                keys.LEASES,
                keys.DISPATCH,
                keys.INFLIGHT,
            ],
            args=[record.id, JobStatus.QUEUED.value, keys.FAIR_PREFIX],
        )
        return int(detail) if outcome == "deleted" else 0


def _encode_cursor(score: float, job_id: str) -> str:
    raw = f"{int(score)}:{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, job_id = raw.split(":", 1)
        return float(int(score)), job_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest("The cursor is not one this API returned.", param="cursor") from exc
