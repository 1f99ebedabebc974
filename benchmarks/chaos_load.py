"""The chaos suite's load: a mix of jobs, clients that retry, and a monitor of records.

Clients are threads using httpx. Each job is POSTed once at its planned time and retried,
under the same ``Idempotency-Key``, on connection errors, 429 and 5xx, with doubling
backoff, until it is answered 202 or the submit deadline passes. The monitor reads every
accepted job's record from Redis twice a second, so a record that changes after reaching a
terminal status is seen even when the change does not last.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx
import redis

from scheduler.jobs.states import JobStatus
from scheduler.redis import keys

__all__ = ["Account", "JobSpec", "Submission", "plan_jobs", "Submitter", "Monitor", "Observation"]

PROMPTS = (
    "Editorial photo of a lighthouse on a cliff at dawn, 35mm, soft light",
    "Cute kitten astronaut floating in a starfield, illustration",
    "Minimalist product photo of a black ceramic mug on a white surface",
    "Use image_1 for the style. A harbour at night with neon reflections",
)
EXPLICIT_SIZES = ("2560x1440", "1664x2496", "1920x1920")
TERMINAL = frozenset(s.value for s in JobStatus if s.is_terminal())


@dataclass(frozen=True)
class Account:
    """A scenario's account: its key and where its webhooks go."""

    name: str
    api_key: str
    webhook_url: str
    credits: int


@dataclass(frozen=True)
class JobSpec:
    """One job to submit ``at`` seconds after the load starts."""

    index: int
    account: Account
    body: dict[str, Any]
    idempotency_key: str
    at: float

    @property
    def images(self) -> int:
        """Images the job asks for."""
        return int(self.body.get("n", 1))


def plan_jobs(
    count: int,
    accounts: list[Account],
    *,
    tag: str,
    spread_seconds: float,
    reference_urls: list[str],
    rng: random.Random,
    max_n: int = 4,
    allow_4k: bool = True,
) -> list[JobSpec]:
    """A reproducible mix: n 1-``max_n``, sizes 2K / explicit / (n=1) 4K, a quarter with a
    reference, half with a webhook. Each job has its own end user, so the usage counters
    the finish script keeps per end user count the finishes of that one job."""
    specs = []
    for index in range(count):
        account = accounts[index % len(accounts)]
        n = min(max_n, rng.choices((1, 2, 3, 4), weights=(40, 30, 15, 15))[0])
        draw = rng.random()
        if allow_4k and draw < 0.1:
            size, n = "4K", 1
        elif draw < 0.4:
            size = rng.choice(EXPLICIT_SIZES)
        else:
            size = "2K"
        body: dict[str, Any] = {
            "endUserEmail": f"{tag}-{index}@your-product.com",
            "model": "xSD4.5",
            "prompt": rng.choice(PROMPTS),
            "size": size,
            "n": n,
            "seed": rng.randrange(2**31),
        }
        if rng.random() < 0.25:
            body["references"] = [rng.choice(reference_urls)]
        if rng.random() < 0.5:
            body["webhookUrl"] = account.webhook_url
        at = spread_seconds * index / max(1, count - 1)
        specs.append(JobSpec(index, account, body, f"{tag}-{uuid.uuid4().hex}", at))
    return specs


@dataclass
class Submission:
    """What happened to one job's POSTs."""

    spec: JobSpec
    posted_at: float = 0.0
    accepted_at: float | None = None
    request_id: str | None = None
    attempts: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    gave_up: str | None = None


class Submitter:
    """Submits planned jobs from a pool of client threads."""

    def __init__(
        self, base_url: str, specs: list[JobSpec], *, threads: int = 8, deadline: float = 180
    ) -> None:
        self.submissions = [Submission(spec) for spec in specs]
        self._http = httpx.Client(base_url=base_url, timeout=10)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="client")
        self._deadline = deadline
        self._started = 0.0
        self._done = threading.Event()

    def start(self) -> Submitter:
        """Start submitting in the background."""
        self._started = time.monotonic()
        futures = [self._pool.submit(self._submit, s) for s in self.submissions]
        threading.Thread(target=self._finish, args=(futures,), daemon=True).start()
        return self

    def _finish(self, futures: list) -> None:
        for future in futures:
            future.result()
        self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Until every job is answered or given up."""
        return self._done.wait(timeout)

    def accepted(self) -> list[Submission]:
        """Submissions answered 202 so far."""
        return [s for s in self.submissions if s.request_id is not None]

    def close(self) -> None:
        """Release the client threads and connections."""
        self._pool.shutdown(wait=True)
        self._http.close()

    def _submit(self, submission: Submission) -> None:
        spec = submission.spec
        delay = self._started + spec.at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        headers = {
            "Authorization": f"Bearer {spec.account.api_key}",
            "Idempotency-Key": spec.idempotency_key,
        }
        submission.posted_at = time.time()
        deadline = time.monotonic() + self._deadline
        backoff = 0.2
        while True:
            submission.attempts += 1
            try:
                response = self._http.post("/v1/generations", json=spec.body, headers=headers)
            except httpx.TransportError as exc:
                submission.errors[type(exc).__name__] += 1
            else:
                if response.status_code == 202:
                    submission.request_id = response.json()["requestId"]
                    submission.accepted_at = time.time()
                    return
                label = f"{response.status_code} {_error_code(response)}"
                if response.status_code != 429 and response.status_code < 500:
                    submission.gave_up = label  # the request itself was refused
                    return
                submission.errors[label] += 1
            if time.monotonic() > deadline:
                submission.gave_up = "submit deadline"
                return
            time.sleep(backoff)
            backoff = min(3.0, backoff * 2)


def _error_code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "no error body"


class Observation(NamedTuple):
    """A job's record fields as the monitor saw them at ``at`` (epoch seconds)."""

    at: float
    status: str | None
    attempt: str | None
    finished_ms: str | None


class Monitor:
    """Watches the records of accepted jobs; keeps each job's distinct observations."""

    _FIELDS = ("status", "attempt", "finished_ms")

    def __init__(self, client: redis.Redis, submitter: Submitter, *, interval: float = 0.5):
        self._redis = client
        self._submitter = submitter
        self._interval = interval
        self.history: dict[str, list[Observation]] = {}
        self.read_errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)

    def start(self) -> Monitor:
        """Start watching in the background."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (after one last look)."""
        self._stop.set()
        self._thread.join()
        self._look()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._look()

    def _look(self) -> None:
        ids = [s.request_id for s in self._submitter.accepted() if s.request_id]
        if not ids:
            return
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(keys.job(job_id), *self._FIELDS)
        try:
            rows = pipe.execute()
        except redis.RedisError:
            self.read_errors += 1  # Redis is down on purpose; the next look catches up
            return
        now = time.time()
        with self._lock:
            for job_id, (status, attempt, finished_ms) in zip(ids, rows, strict=True):
                seen = self.history.setdefault(job_id, [])
                observation = Observation(now, status, attempt, finished_ms)
                if not seen or seen[-1][1:] != observation[1:]:
                    seen.append(observation)

    def latest(self) -> dict[str, Observation]:
        """Each job's last observation."""
        with self._lock:
            return {job_id: seen[-1] for job_id, seen in self.history.items() if seen}

    def in_status(self, status: JobStatus) -> list[str]:
        """Jobs last seen in ``status``."""
        return [j for j, o in self.latest().items() if o.status == status.value]

    def all_terminal(self) -> bool:
        """Whether every accepted job was last seen terminal."""
        latest = self.latest()
        accepted = self._submitter.accepted()
        return all(
            s.request_id in latest and latest[s.request_id].status in TERMINAL for s in accepted
        )

    def terminal_changes(self, job_id: str) -> list[Observation]:
        """Observations after the job's first terminal one that differ from it: a
        terminal record must never change."""
        with self._lock:
            seen = list(self.history.get(job_id, []))
        first = next((i for i, o in enumerate(seen) if o.status in TERMINAL), None)
        if first is None:
            return []
        return [o for o in seen[first + 1 :] if o.status is not None]
