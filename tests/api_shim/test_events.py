"""GET /v1/generations/:id/events through a real uvicorn, read by a real HTTP client (httpx
streaming, and the product's client); the jobs are moved on by hand (no workers here)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

import api_shim.events as events_module
from api_shim.app import create_app
from api_shim.client import ApiError, XsdClient
from api_shim.events import KEEPALIVE_SECONDS, StreamSlots, record_events, released
from api_shim.sse import ServerEvent, parse_events
from scheduler import RateLimited
from scheduler.jobs.states import JobErrorCode
from scheduler.redis.embedded import free_port
from scheduler.runtime import Runtime

from .conftest import VALID, Api, serving


def events_of(response: httpx.Response) -> Iterator[ServerEvent]:
    return parse_events(response.iter_lines())


def claim(api: Api, job_id: str) -> int:
    return api.runtime.jobs.claim(job_id, lease_ms=60_000).attempt


def fail(api: Api, job_id: str, attempt: int) -> None:
    record = api.runtime.jobs.get(job_id)
    assert record is not None
    api.runtime.jobs.fail(
        record, JobErrorCode.PROVIDER_ERROR, "The model broke.", attempt=attempt, webhook_at_ms=None
    )


def test_a_job_streams_its_status_progress_and_final_record(api: Api) -> None:
    key = api.new_key()
    job_id = api.post(key, VALID).json()["requestId"]
    with api.http(key) as http, http.stream("GET", f"/v1/generations/{job_id}/events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        assert int(r.headers["x-ratelimit-remaining"]) >= 0, "opening it counts as a read"
        stream = events_of(r)
        queued = next(stream)
        assert (queued.event, queued.data["status"]) == ("status", "queued")
        assert queued.data == http.get(f"/v1/generations/{job_id}").json(), "the GET record"
        attempt = claim(api, job_id)
        processing = next(stream)
        assert (processing.event, processing.data["status"]) == ("status", "processing")
        assert "progress" not in processing.data
        api.runtime.jobs.record_progress([(job_id, attempt, 7, 40)])
        progress = next(stream)
        assert progress.event == "progress"
        assert progress.data["progress"] == {"fraction": 0.175, "stepsDone": 7, "stepsTotal": 40}
        assert len({queued.id, processing.id, progress.id}) == 3
        fail(api, job_id, attempt)
        done = next(stream)
        assert done.event == "done"
        assert done.data == http.get(f"/v1/generations/{job_id}").json()
        assert done.data["error"]["code"] == "provider_error"
        with pytest.raises(StopIteration):
            next(stream)


def test_a_finished_job_sends_its_record_and_ends(api: Api) -> None:
    key = api.new_key()
    job_id = api.post(key, VALID).json()["requestId"]
    fail(api, job_id, claim(api, job_id))
    with api.http(key) as http, http.stream("GET", f"/v1/generations/{job_id}/events") as r:
        raw = r.read().decode()
    assert raw.startswith("retry: ")
    assert [(e.event, e.data["status"]) for e in parse_events(raw.splitlines())] == [
        ("done", "failed")
    ]


def test_a_reconnect_with_last_event_id_skips_what_it_saw(api: Api) -> None:
    key = api.new_key()
    job_id = api.post(key, VALID).json()["requestId"]
    path = f"/v1/generations/{job_id}/events"
    with api.http(key) as http:
        with http.stream("GET", path) as r:
            seen = next(events_of(r))
        assert seen.data["status"] == "queued" and seen.id
        with http.stream("GET", path, headers={"Last-Event-ID": seen.id}) as r:
            claim(api, job_id)
            resumed = next(events_of(r))
        assert resumed.data["status"] == "processing", "the queued state is not sent again"
        with http.stream("GET", path, headers={"Last-Event-ID": "something-else"}) as r:
            again = next(events_of(r))
        assert again.id == resumed.id, "an unknown id gets the current state"


def test_same_authentication_and_tenancy_as_get(api: Api) -> None:
    owner, other = api.new_key(), api.new_key()
    job_id = api.post(owner, VALID).json()["requestId"]
    path = f"/v1/generations/{job_id}/events"
    with api.http() as anonymous:
        answer = anonymous.get(path)
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "authentication_error"
    with api.http(other) as http:
        for url in (path, "/v1/generations/req_doesnotexist0000/events"):
            answer = http.get(url)
            assert answer.status_code == 404, url
            assert answer.headers["content-type"] == "application/json"
            assert answer.json()["error"]["code"] == "not_found"


def test_the_client_streams_and_resumes_across_ended_connections(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every stream ends after its first event: the client reopens it with Last-Event-ID.
    monkeypatch.setattr(events_module, "MAX_STREAM_SECONDS", 0)
    key = api.new_key()
    job_id = api.post(key, VALID).json()["requestId"]
    with XsdClient(api.base_url, key.api_key) as client:
        stream = client.stream(job_id, timeout=60)
        first = next(stream)
        assert (first.event, first.data["status"]) == ("status", "queued")
        attempt = claim(api, job_id)
        second = next(stream)
        assert second.data["status"] == "processing", "nothing seen is sent again"
        fail(api, job_id, attempt)
        assert [event.event for event in stream] == ["done"]


def test_the_client_polls_a_server_without_the_endpoint(api: Api) -> None:
    # The same API on the same Redis, as a server from before the endpoint existed.
    settings = api.runtime.settings.model_copy(update={"port": free_port()})
    runtime = Runtime(settings=settings, redis_url=api.runtime.redis_url)
    app = create_app(runtime)
    app.router.routes = [
        route for route in app.router.routes if not getattr(route, "path", "").endswith("/events")
    ]
    key = api.new_key()
    job_id = api.post(key, VALID).json()["requestId"]
    with serving(runtime, app) as base_url, XsdClient(base_url, key.api_key) as client:
        with pytest.raises(ApiError) as missing:
            next(client.stream("req_doesnotexist0000", poll_interval=0.05))
        assert missing.value.status == 404, "an unknown record still raises"
        stream = client.stream(job_id, poll_interval=0.05)
        assert next(stream).data["status"] == "queued"
        attempt = claim(api, job_id)
        assert next(stream).data["status"] == "processing"
        api.runtime.jobs.record_progress([(job_id, attempt, 1, 4)])
        progress = next(stream)
        assert progress.event == "progress" and progress.data["progress"]["stepsDone"] == 1
        fail(api, job_id, attempt)
        assert [(e.event, e.data["status"]) for e in stream] == [("done", "failed")]


def run(events: Any) -> list[bytes]:
    async def collect() -> list[bytes]:
        return [chunk async for chunk in events]

    return asyncio.run(collect())


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


QUEUED = {"requestId": "req_x", "status": "queued"}


def test_a_quiet_stream_sends_keepalives() -> None:
    fake = FakeTime()
    polls = iter([QUEUED] * int(2.5 * KEEPALIVE_SECONDS / events_module.POLL_SECONDS))

    async def poll() -> dict[str, Any]:
        try:
            return next(polls)
        except StopIteration:
            return {**QUEUED, "status": "failed"}

    chunks = run(
        record_events(QUEUED, poll, last_event_id=None, sleep=fake.sleep, clock=fake.clock)
    )
    assert chunks.count(b": keepalive\n\n") == 2
    assert chunks[-1].startswith(b"id: ") and b"event: done" in chunks[-1]


def test_an_outage_during_a_stream_ends_it_with_an_error_event() -> None:
    fake = FakeTime()

    async def poll() -> dict[str, Any]:
        raise redis.ConnectionError("Connection refused")

    chunks = run(
        record_events(QUEUED, poll, last_event_id=None, sleep=fake.sleep, clock=fake.clock)
    )
    (*_, last) = parse_events(b"".join(chunks).decode().splitlines())
    assert last.event == "error"
    assert last.data["error"]["code"] == "service_unavailable"
    assert set(last.data["error"]) == {"code", "message", "param"}


def test_streams_per_key_are_bounded_and_released() -> None:
    slots = StreamSlots(limit=2)
    first, second = slots.acquire("k"), slots.acquire("k")
    with pytest.raises(RateLimited):
        slots.acquire("k")
    slots.acquire("other")
    second()
    second()  # the stream's end and the response's background task: released once
    assert slots.open("k") == 1

    async def endless() -> Any:
        while True:
            yield b"x"

    async def read_one() -> None:
        stream = released(endless(), first)
        await anext(stream)
        await stream.aclose()  # the client went away

    asyncio.run(read_one())
    assert slots.open("k") == 0
    slots.acquire("k")
