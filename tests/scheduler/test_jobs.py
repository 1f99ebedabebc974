"""Job records against a real redis-server: debit, claims, leases, refunds, listing."""

from __future__ import annotations

import pytest
import redis

from scheduler.errors import Conflict, InsufficientBalance, InvalidRequest, NotFound
from scheduler.jobs.records import ImageResult, JobRecord
from scheduler.jobs.states import InvalidTransition, JobErrorCode, JobStatus
from scheduler.jobs.store import JobStore
from scheduler.redis import keys
from scheduler.redis.accounts import Accounts

from .factories import accept, job_record

ACCOUNT = "acme"
EMAIL = "alice@your-product.com"


class Clock:
    """A settable clock (seconds)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def jobs(redis_client: redis.Redis, clock: Clock) -> JobStore:
    accounts = Accounts(redis_client, pepper=b"pepper")
    accounts.ensure(ACCOUNT)
    accounts.add_credits(ACCOUNT, 100)
    return JobStore(redis_client, clock=clock)


def balance(client: redis.Redis) -> int:
    return int(client.hget(keys.account(ACCOUNT), "balance"))


def make_record(
    jobs: JobStore, *, images: int = 2, email: str = EMAIL, webhook: bool = False
) -> JobRecord:
    return job_record(
        image_count=images,
        email=email,
        created_ms=jobs.now_ms(),
        webhook_url="https://hooks.your-product.com/x" if webhook else None,
    )


def test_accept_debits_and_indexes(jobs: JobStore, redis_client: redis.Redis) -> None:
    record = make_record(jobs)
    job_id, replayed = accept(jobs, record)
    assert (job_id, replayed) == (record.id, False)
    assert balance(redis_client) == 80
    stored = jobs.get(job_id)
    assert stored is not None and stored.status is JobStatus.QUEUED and stored.charged == 20
    assert redis_client.zscore(keys.ACTIVE, job_id) == record.created_ms + 60_000
    assert jobs.usage(ACCOUNT, EMAIL) == {"requests": 1, "debited": 20}


def test_insufficient_balance_changes_nothing(jobs: JobStore, redis_client: redis.Redis) -> None:
    record = make_record(jobs, images=11)
    with pytest.raises(InsufficientBalance) as caught:
        accept(jobs, record)
    assert (caught.value.balance, caught.value.cost) == (100, 110)
    assert balance(redis_client) == 100
    assert jobs.get(record.id) is None
    assert jobs.usage(ACCOUNT, EMAIL) == {}


def test_unknown_account_is_not_found(jobs: JobStore) -> None:
    record = make_record(jobs)
    stranger = JobRecord(**{**record.__dict__, "account": "nobody"})
    with pytest.raises(NotFound):
        accept(jobs, stranger)


def test_idempotency_replay_debits_once(jobs: JobStore, redis_client: redis.Redis) -> None:
    first = make_record(jobs)
    assert accept(jobs, first, key="k1") == (first.id, False)
    second = make_record(jobs)
    assert accept(jobs, second, key="k1") == (first.id, True)
    assert balance(redis_client) == 80
    assert jobs.get(second.id) is None


def test_idempotency_key_with_other_body_conflicts(
    jobs: JobStore, redis_client: redis.Redis
) -> None:
    accept(jobs, make_record(jobs), key="k1", fingerprint="a")
    with pytest.raises(Conflict, match="different request body"):
        accept(jobs, make_record(jobs), key="k1", fingerprint="b")
    assert balance(redis_client) == 80


def test_claim_lease_and_takeover(jobs: JobStore, clock: Clock) -> None:
    record = make_record(jobs)
    accept(jobs, record)
    first = jobs.claim(record.id, lease_ms=5000)
    assert (first.outcome, first.attempt) == ("claimed", 1)
    busy = jobs.claim(record.id, lease_ms=5000)
    assert busy.outcome == "busy" and busy.lease_until_ms == jobs.now_ms() + 5000
    clock.now += 3
    assert jobs.renew(record.id, 1, lease_ms=5000)
    clock.now += 4  # still inside the renewed lease
    assert jobs.claim(record.id, lease_ms=5000).outcome == "busy"
    clock.now += 2  # lease over: the first worker is presumed dead
    second = jobs.claim(record.id, lease_ms=5000)
    assert (second.outcome, second.attempt) == ("claimed", 2)
    assert not jobs.renew(record.id, 1, lease_ms=5000), "the old attempt lost its lease"


def test_stale_attempt_cannot_finish(
    jobs: JobStore, clock: Clock, redis_client: redis.Redis
) -> None:
    record = make_record(jobs)
    accept(jobs, record)
    jobs.claim(record.id, lease_ms=1000)
    clock.now += 2
    jobs.claim(record.id, lease_ms=1000)
    images = [ImageResult(index=0, key="k0"), ImageResult(index=1, key="k1")]
    stale = jobs.succeed(record, 1, images, webhook_at_ms=None)
    assert stale.outcome == "stale"
    done = jobs.succeed(record, 2, images, webhook_at_ms=None)
    assert done.ok and done.refund == 0
    again = jobs.succeed(record, 2, images, webhook_at_ms=None)
    assert again.outcome == "stale", "a redelivered finish is a no-op"
    assert balance(redis_client) == 80
    stored = jobs.get(record.id)
    assert stored is not None and stored.status is JobStatus.SUCCEEDED and stored.cost == 20


def test_storage_failed_image_is_refunded(jobs: JobStore, redis_client: redis.Redis) -> None:
    record = make_record(jobs, images=3)
    accept(jobs, record)
    attempt = jobs.claim(record.id, lease_ms=1000).attempt
    images = [
        ImageResult(index=0, key="k0"),
        ImageResult(index=1, error="storage_failed"),
        ImageResult(index=2, key="k2"),
    ]
    finish = jobs.succeed(record, attempt, images, webhook_at_ms=None)
    assert finish.refund == 10
    assert balance(redis_client) == 100 - 20
    stored = jobs.get(record.id)
    assert stored is not None and stored.cost == 20 and stored.refunded == 10
    usage = jobs.usage(ACCOUNT, EMAIL)
    assert usage["images"] == 2 and usage["debited"] - usage["refunded"] == 20


def test_failure_refunds_exactly_once(jobs: JobStore, redis_client: redis.Redis) -> None:
    record = make_record(jobs)
    accept(jobs, record)
    first = jobs.fail(record, JobErrorCode.PROVIDER_ERROR, "boom", webhook_at_ms=None)
    second = jobs.fail(record, JobErrorCode.PROVIDER_TIMEOUT, "late", webhook_at_ms=None)
    assert (first.ok, first.refund) == (True, 20)
    assert second.outcome == "stale"
    assert balance(redis_client) == 100
    stored = jobs.get(record.id)
    assert stored is not None and stored.error == {"code": "provider_error", "message": "boom"}
    assert redis_client.zscore(keys.ACTIVE, record.id) is None


def test_cancel_only_while_queued(jobs: JobStore, redis_client: redis.Redis) -> None:
    record = make_record(jobs)
    accept(jobs, record)
    jobs.claim(record.id, lease_ms=1000)
    refused = jobs.fail(
        record, JobErrorCode.CANCELLED, "x", only=(JobStatus.QUEUED,), webhook_at_ms=None
    )
    assert refused.outcome == "stale"
    assert balance(redis_client) == 80


def test_subsets_are_checked_against_the_state_machine(jobs: JobStore) -> None:
    record = make_record(jobs)
    with pytest.raises(InvalidTransition):
        jobs.fail(
            record, JobErrorCode.CANCELLED, "x", only=(JobStatus.SUCCEEDED,), webhook_at_ms=None
        )


def test_policy_violation_is_counted(jobs: JobStore) -> None:
    record = make_record(jobs)
    accept(jobs, record)
    jobs.fail(record, JobErrorCode.CONTENT_POLICY, "refused", webhook_at_ms=None)
    assert jobs.usage(ACCOUNT, EMAIL)["policy_violations"] == 1


def test_terminal_transition_schedules_webhook(jobs: JobStore, redis_client: redis.Redis) -> None:
    record = make_record(jobs, webhook=True)
    accept(jobs, record)
    jobs.fail(record, JobErrorCode.PROVIDER_ERROR, "x", webhook_at_ms=123)
    assert redis_client.zscore(keys.WEBHOOKS_DUE, record.id) == 123
    plain = make_record(jobs)
    accept(jobs, plain)
    jobs.fail(plain, JobErrorCode.PROVIDER_ERROR, "x", webhook_at_ms=123)
    assert redis_client.zscore(keys.WEBHOOKS_DUE, plain.id) is None


def test_delete_refunds_only_unclaimed_jobs_and_unindexes(
    jobs: JobStore, redis_client: redis.Redis
) -> None:
    waiting = make_record(jobs)
    accept(jobs, waiting)
    assert jobs.delete(waiting) == 20, "no worker took it: refunded"
    assert balance(redis_client) == 100
    running = make_record(jobs)
    accept(jobs, running)
    jobs.claim(running.id, lease_ms=1000)
    assert jobs.delete(running) == 0, "a worker claimed it: charged"
    assert jobs.get(running.id) is None
    assert balance(redis_client) == 80
    finished = make_record(jobs)
    accept(jobs, finished)
    jobs.fail(finished, JobErrorCode.PROVIDER_ERROR, "x", webhook_at_ms=None)
    assert jobs.delete(finished) == 0
    assert jobs.delete(finished) == 0, "deleting twice is harmless"
    for index in (
        keys.ACTIVE,
        keys.PURGE,
        keys.DISPATCH,
        keys.LEASES,
        keys.account_jobs(ACCOUNT),
        keys.user_jobs(ACCOUNT, EMAIL),
    ):
        assert redis_client.zcard(index) == 0
    # A worker finishing a deleted job finds it gone and must not resurrect it.
    assert jobs.succeed(running, 1, [], webhook_at_ms=None).outcome == "gone"
    assert jobs.get(running.id) is None


def test_cancelling_a_claimed_job_keeps_its_charge(
    jobs: JobStore, redis_client: redis.Redis
) -> None:
    record = make_record(jobs)
    accept(jobs, record)
    jobs.claim(record.id, lease_ms=1000)
    finish = jobs.fail(
        record,
        JobErrorCode.CANCELLED,
        "stopped",
        only=(JobStatus.PROCESSING,),
        cost=record.charged,
        webhook_at_ms=None,
    )
    assert (finish.ok, finish.refund) == (True, 0)
    assert balance(redis_client) == 80
    stored = jobs.get(record.id)
    assert stored is not None and stored.status is JobStatus.FAILED and stored.cost == 20
    assert jobs.usage(ACCOUNT, EMAIL).get("refunded", 0) == 0


def test_the_outbox_holds_a_job_until_a_worker_claims_it(
    jobs: JobStore, redis_client: redis.Redis
) -> None:
    record = make_record(jobs)
    accept(jobs, record, dispatch_at_ms=record.created_ms + 1_000)
    assert redis_client.zscore(keys.DISPATCH, record.id) == record.created_ms + 1_000
    jobs.resend_at(record.id, record.created_ms + 300_000)
    assert redis_client.zscore(keys.DISPATCH, record.id) == record.created_ms + 300_000
    assert jobs.claim(record.id, lease_ms=1000).outcome == "claimed"
    assert redis_client.zscore(keys.DISPATCH, record.id) is None
    jobs.resend_at(record.id, record.created_ms + 600_000)
    assert redis_client.zscore(keys.DISPATCH, record.id) is None, "a late mark adds nothing"
    failed = make_record(jobs)
    accept(jobs, failed)
    jobs.fail(failed, JobErrorCode.CANCELLED, "x", webhook_at_ms=None)
    assert redis_client.zscore(keys.DISPATCH, failed.id) is None


def test_a_worker_learns_which_held_jobs_it_lost(jobs: JobStore, clock: Clock) -> None:
    kept, cancelled, taken, deleted = (make_record(jobs) for _ in range(4))
    held = {}
    for record in (kept, cancelled, taken, deleted):
        accept(jobs, record)
        held[record.id] = jobs.claim(record.id, lease_ms=1000).attempt
    jobs.fail(cancelled, JobErrorCode.CANCELLED, "x", webhook_at_ms=None)
    jobs.delete(deleted)
    clock.now += 2  # the leases lapse
    assert jobs.claim(taken.id, lease_ms=1000).attempt == 2, "another worker took it over"
    assert jobs.not_owned(held) == {cancelled.id, taken.id, deleted.id}


def test_get_owned_hides_other_accounts(jobs: JobStore) -> None:
    record = make_record(jobs)
    accept(jobs, record)
    assert jobs.get_owned(ACCOUNT, record.id).id == record.id
    with pytest.raises(NotFound):
        jobs.get_owned("other", record.id)
    with pytest.raises(NotFound):
        jobs.get_owned(ACCOUNT, "not-an-id")


def test_listing_pages_are_stable(jobs: JobStore, clock: Clock) -> None:
    created = []
    for i in range(7):
        # Two jobs per millisecond: the cursor must break ties by id.
        clock.now += 0.001 * (i % 2)
        record = make_record(jobs, images=1)
        accept(jobs, record)
        created.append(record.id)
    other = make_record(jobs, images=1, email="bob@your-product.com")
    accept(jobs, other)
    seen, cursor = [], None
    while True:
        page, cursor = jobs.list_ids(ACCOUNT, EMAIL, limit=3, cursor=cursor)
        seen += page
        if cursor is None:
            break
        # A job arriving between pages must not shift later pages.
        clock.now += 1
        accept(jobs, make_record(jobs, images=1))
    assert len(seen) == 7 and set(seen) == set(created)
    scores = [jobs.get(i).created_ms for i in seen]  # type: ignore[union-attr]
    assert scores == sorted(scores, reverse=True)
    everything, _ = jobs.list_ids(ACCOUNT, None, limit=100, cursor=None)
    assert other.id in everything and len(everything) == 7 + 1 + 2


def test_bad_cursor_is_a_validation_error(jobs: JobStore) -> None:
    with pytest.raises(InvalidRequest):
        jobs.list_ids(ACCOUNT, EMAIL, limit=3, cursor="%%%")
