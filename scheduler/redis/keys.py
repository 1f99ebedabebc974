"""Every Redis key the scheduler uses, named in one place.

All keys share the ``xsd:`` prefix so an operator can tell them apart from Celery's own
(``_kombu.*``, queue lists) in a shared Redis.
"""

from __future__ import annotations

__all__ = [
    "account",
    "api_key",
    "job",
    "user_jobs",
    "account_jobs",
    "usage",
    "idempotency",
    "rate_window",
    "webhook_lock",
    "ACTIVE",
    "PURGE",
    "WEBHOOKS_DUE",
    "LEASES",
    "DISPATCH",
    "INFLIGHT",
    "FAIR_PREFIX",
    "fair_queue",
    "fair_clock",
    "fair_tags",
]

_P = "xsd:"

# Non-terminal jobs scored by their deadline (ms): the reaper fails what is overdue.
ACTIVE = _P + "active"
# Every job scored by the time (ms) its record and objects are purged.
PURGE = _P + "purge"
# Jobs whose webhook is due, scored by the next attempt time (ms).
WEBHOOKS_DUE = _P + "webhooks:due"
# Processing jobs scored by the end of their worker's lease (ms): the tick re-dispatches
# jobs whose worker stopped renewing (it died), whatever became of their broker message.
LEASES = _P + "leases"
# The outbox: queued jobs no worker has claimed yet, scored by the time (ms) at which the
# tick sends them again. Whatever became of their message (an API killed before it sent
# it, a message lost with a broker restart), an accepted job reaches a worker.
DISPATCH = _P + "dispatch"
# Images in flight (claimed, not finished): field ``acct:<account>`` per account (its cap
# is checked against it) and ``queue:<queue>`` per GPU queue (the dashboard shows it).
INFLIGHT = _P + "inflight"
# Prefix of the per-GPU-queue sorted sets of waiting jobs (see :func:`fair_queue`). The
# scripts that finish or delete a job derive its set from the ``queue`` field of its record.
FAIR_PREFIX = _P + "fair:"


def account(name: str) -> str:
    """Hash: balance, webhook secret, creation time."""
    return f"{_P}acct:{name}"


def api_key(key_id: str) -> str:
    """Hash: the owning account and the peppered digest of the whole key."""
    return f"{_P}key:{key_id}"


def job(job_id: str) -> str:
    """Hash: one generation's record."""
    return f"{_P}job:{job_id}"


def user_jobs(account_name: str, email: str) -> str:
    """Sorted set of an end user's job ids, scored by creation time (ms)."""
    return f"{_P}user:{account_name}:{email}"


def account_jobs(account_name: str) -> str:
    """Sorted set of an account's job ids, scored by creation time (ms)."""
    return f"{_P}acctjobs:{account_name}"


def usage(account_name: str, email: str) -> str:
    """Hash of an end user's counters (requests, images, xTokens, policy violations)."""
    return f"{_P}usage:{account_name}:{email}"


def idempotency(account_name: str, key_digest: str) -> str:
    """String ``<fingerprint>|<job id>`` for an Idempotency-Key, with a TTL."""
    return f"{_P}idem:{account_name}:{key_digest}"


def rate_window(bucket: str, window: int) -> str:
    """Counter of calls in one fixed window of the sliding-window rate limiter."""
    return f"{_P}rl:{bucket}:{window}"


def webhook_lock(job_id: str) -> str:
    """Short-lived lock held while one worker delivers a job's webhook."""
    return f"{_P}whlock:{job_id}"


def fair_queue(queue: str) -> str:
    """Sorted set of the jobs waiting for a GPU queue, scored by their virtual finish tag
    (weighted fair queuing by account): workers take the lowest tags first."""
    return FAIR_PREFIX + queue


def fair_clock(queue: str) -> str:
    """Hash of a GPU queue's fair-queuing state: the virtual time ``vt`` (the tag of the
    last job taken) and the recent rate at which workers take its jobs."""
    return f"{_P}fairclock:{queue}"


def fair_tags(queue: str) -> str:
    """Hash: account -> the finish tag of its last job queued on a GPU queue."""
    return f"{_P}fairtags:{queue}"
