"""Auth, billing, idempotency, rate limits, tenancy and the management endpoints."""

from __future__ import annotations

import httpx
import pytest

from scheduler.jobs.records import ImageResult
from scheduler.redis import keys
from scheduler.stages.celery_app import job_queue
from storage import ObjectNotFound

from .conftest import RATE_LIMIT, VALID, Api


def test_post_answers_202_queued(api: Api) -> None:
    key = api.new_key()
    response = api.post(key, VALID)
    assert response.status_code == 202
    record = response.json()
    assert record["requestId"].startswith("req_") and len(record["requestId"]) == 20
    assert record["status"] == "queued"
    assert record["pollUrl"] == f"{api.base_url}/v1/generations/{record['requestId']}"
    assert response.headers["Location"] == record["pollUrl"]
    assert record["createdAt"].endswith("Z") and record["model"] == "xSD4.5"
    assert record["referencesCount"] == 0 and "images" not in record and "cost" not in record
    assert api.balance(key) == 990
    assert response.headers["X-RateLimit-Limit"] == str(RATE_LIMIT)


def test_a_queued_job_shows_its_place_in_its_queue(api: Api) -> None:
    key = api.new_key()
    first, second = (api.post(key, VALID).json() for _ in range(2))
    assert first["queue"] == {"position": None, "estimatedStartAt": None}, "not routed yet"
    jobs = api.runtime.jobs
    for job in (first, second):
        record = jobs.get(job["requestId"])
        assert record is not None
        jobs.enqueue(record, job_queue(record), {"prepared_ms": str(jobs.now_ms())})
    with api.http(key) as client:
        view = client.get(f"/v1/generations/{second['requestId']}").json()
        assert view["queue"] == {"position": 2, "estimatedStartAt": None}
        jobs.pick(job_queue(record), 1, lease_ms=60_000)
        view = client.get(f"/v1/generations/{second['requestId']}").json()
        assert view["queue"]["position"] == 1
        assert "queue" not in client.get(f"/v1/generations/{first['requestId']}").json()


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Bearer xm_live_nope", "Basic Zm9vOmJhcg==", "Bearer xm_live_" + "A" * 44],
)
def test_authentication_errors(api: Api, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = httpx.post(f"{api.base_url}/v1/generations", json=VALID, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_error"
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("second", ["same", "Bearer xm_live_nope"])
def test_two_authorization_headers(api: Api, second: str) -> None:
    key = api.new_key()
    bearer = f"Bearer {key.api_key}"
    headers = [("Authorization", bearer), ("Authorization", bearer if second == "same" else second)]
    for request in (
        httpx.Request("POST", f"{api.base_url}/v1/generations", json=VALID, headers=headers),
        httpx.Request("GET", f"{api.base_url}/v1/account", headers=headers),
    ):
        with httpx.Client() as client:
            response = client.send(request)
        assert response.status_code == 401, response.text
        error = response.json()["error"]
        assert error["code"] == "authentication_error" and "one Authorization" in error["message"]
    assert api.balance(key) == 1000


def test_auth_comes_before_validation(api: Api) -> None:
    response = httpx.post(f"{api.base_url}/v1/generations", content=b"{broken")
    assert response.status_code == 401


def test_insufficient_balance(api: Api) -> None:
    key = api.new_key(credits=30)
    response = api.post(key, dict(VALID, n=4))
    assert response.status_code == 402
    error = response.json()["error"]
    assert error["code"] == "insufficient_balance" and "40" in error["message"]
    assert api.balance(key) == 30
    assert api.post(key, dict(VALID, n=3)).status_code == 202
    assert api.balance(key) == 0


def test_idempotency(api: Api) -> None:
    key = api.new_key()
    first = api.post(key, VALID, headers={"Idempotency-Key": "order-1"})
    again = api.post(key, VALID, headers={"Idempotency-Key": "order-1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["requestId"] == first.json()["requestId"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert api.balance(key) == 990, "a replay is never charged"
    other = api.post(key, dict(VALID, n=2), headers={"Idempotency-Key": "order-1"})
    assert other.status_code == 409 and other.json()["error"]["param"] == "Idempotency-Key"
    # Keys are per account: another account's same key is a new request.
    stranger = api.new_key()
    assert (
        api.post(stranger, VALID, headers={"Idempotency-Key": "order-1"}).json()["requestId"]
        != first.json()["requestId"]
    )
    bad = api.post(key, VALID, headers={"Idempotency-Key": "x" * 300})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "Idempotency-Key"


def test_rate_limit(api: Api) -> None:
    key = api.new_key()
    for _ in range(RATE_LIMIT):
        assert api.post(key, VALID).status_code == 202
    limited = api.post(key, VALID)
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert api.balance(key) == 1000 - 10 * RATE_LIMIT
    with api.http(key) as client:
        assert client.get("/v1/account").status_code == 200, "reads have their own limit"
    assert api.post(api.new_key(), VALID).status_code == 202, "limits are per key"


def test_tenancy(api: Api) -> None:
    owner, stranger = api.new_key(), api.new_key()
    request_id = api.post(owner, VALID).json()["requestId"]
    with api.http(stranger) as client:
        for response in (
            client.get(f"/v1/generations/{request_id}"),
            client.post(f"/v1/generations/{request_id}/cancel"),
            client.delete(f"/v1/generations/{request_id}"),
        ):
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "not_found"
        listed = client.get("/v1/generations").json()["data"]
        assert request_id not in [r["requestId"] for r in listed]
    with api.http(owner) as client:
        assert client.get(f"/v1/generations/{request_id}").json()["status"] == "queued"
        assert client.get("/v1/generations/req_doesnotexist0000").status_code == 404


def test_cancel_refunds_once(api: Api) -> None:
    key = api.new_key()
    request_id = api.post(key, dict(VALID, n=3)).json()["requestId"]
    assert api.balance(key) == 970
    with api.http(key) as client:
        cancelled = client.post(f"/v1/generations/{request_id}/cancel")
        assert cancelled.status_code == 200
        record = cancelled.json()
        assert record["status"] == "failed" and record["error"]["code"] == "cancelled"
        assert "finishedAt" in record and "pollUrl" not in record
        again = client.post(f"/v1/generations/{request_id}/cancel")
        assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    assert api.balance(key) == 1000


def test_cancelling_a_processing_job_stops_it_and_keeps_the_charge(api: Api) -> None:
    key = api.new_key()
    request_id = api.post(key, VALID).json()["requestId"]
    assert api.runtime.jobs.claim(request_id, lease_ms=60_000).outcome == "claimed"
    with api.http(key) as client:
        response = client.post(f"/v1/generations/{request_id}/cancel")
        assert response.status_code == 200, response.text
        record = response.json()
        assert record["status"] == "failed" and record["error"]["code"] == "cancelled"
        assert "charged" in record["error"]["message"]
        again = client.post(f"/v1/generations/{request_id}/cancel")
        assert again.status_code == 409 and "already failed" in again.json()["error"]["message"]
    assert api.balance(key) == 990, "a worker had claimed it: no refund"


def test_deleting_a_processing_job_keeps_the_charge(api: Api) -> None:
    key = api.new_key()
    request_id = api.post(key, dict(VALID, n=2)).json()["requestId"]
    assert api.runtime.jobs.claim(request_id, lease_ms=60_000).outcome == "claimed"
    with api.http(key) as client:
        deleted = client.delete(f"/v1/generations/{request_id}").json()
    assert deleted == {"requestId": request_id, "deleted": True, "refundedXTokens": 0}
    assert api.balance(key) == 980


def test_delete_and_erase(api: Api) -> None:
    key = api.new_key()
    store = api.runtime.store
    ids = [
        api.post(key, dict(VALID, endUserEmail="erin@your-product.com")).json()["requestId"]
        for _ in range(3)
    ]
    keep = api.post(key, VALID).json()["requestId"]
    # Finish one so it owns an object in the store.
    done = ids[0]
    attempt = api.runtime.jobs.claim(done, lease_ms=60_000).attempt
    object_key = f"images/{key.account}/{done}/0.png"
    store.put(object_key, b"png", content_type="image/png")
    record = api.runtime.jobs.get(done)
    assert record is not None
    api.runtime.jobs.succeed(
        record, attempt, [ImageResult(index=0, key=object_key)], webhook_at_ms=None
    )
    with api.http(key) as client:
        deleted = client.delete(f"/v1/generations/{ids[1]}")
        assert deleted.json() == {"requestId": ids[1], "deleted": True, "refundedXTokens": 10}
        assert client.get(f"/v1/generations/{ids[1]}").status_code == 404
        erased = client.delete("/v1/end-users/Erin@Your-Product.com/generations").json()
        assert erased == {
            "endUserEmail": "erin@your-product.com",
            "deleted": 2,
            "refundedXTokens": 10,
        }
        for request_id in ids:
            assert client.get(f"/v1/generations/{request_id}").status_code == 404
        assert client.get(f"/v1/generations/{keep}").status_code == 200
        usage = client.get("/v1/end-users/erin@your-product.com/usage").json()
    assert usage["requests"] == 3 and usage["succeeded"] == 1 and usage["xTokens"] == 10
    with pytest.raises(ObjectNotFound):
        store.get(object_key)
    assert api.balance(key) == 1000 - 10 - 10  # the succeeded one and `keep`


def test_listing_with_cursor(api: Api) -> None:
    key = api.new_key()
    ids = [
        api.post(key, dict(VALID, endUserEmail="lee@your-product.com")).json()["requestId"]
        for _ in range(5)
    ]
    api.post(key, VALID)
    seen, cursor = [], None
    with api.http(key) as client:
        while True:
            params = {"endUserEmail": "LEE@your-product.com", "limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = client.get("/v1/generations", params=params).json()
            seen += [r["requestId"] for r in page["data"]]
            cursor = page["nextCursor"]
            if cursor is None:
                break
        assert seen == list(reversed(ids))
        assert client.get("/v1/generations", params={"limit": 0}).status_code == 400
        assert client.get("/v1/generations", params={"limit": 101}).status_code == 400
        bad = client.get("/v1/generations", params={"cursor": "@@@"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "cursor"
        assert client.get("/v1/generations", params={"endUserEmail": "nope"}).status_code == 400


def test_usage_of_unknown_user(api: Api) -> None:
    with api.http(api.new_key()) as client:
        response = client.get("/v1/end-users/nobody@your-product.com/usage")
    assert response.status_code == 404


def test_account_and_models(api: Api) -> None:
    key = api.new_key(credits=250)
    with api.http(key) as client:
        account = client.get("/v1/account").json()
        models = client.get("/v1/models").json()["data"]
    assert account["account"] == key.account and account["balance"] == {"xTokens": 250}
    assert "xSD4.5" in [m["alias"] for m in models]


def test_ops_endpoints(api: Api) -> None:
    assert httpx.get(f"{api.base_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{api.base_url}/readyz").status_code == 200
    api.post(api.new_key(), VALID)
    metrics = httpx.get(f"{api.base_url}/metrics").text
    assert 'xsd_http_requests_total{method="POST",route="/v1/generations",status="202"}' in metrics
    assert "req_" not in metrics, "no request ids in labels"
    assert 'xsd_inflight_images{queue="gpu.xsd45.2k"}' in metrics


def test_unknown_route_and_method(api: Api) -> None:
    missing = httpx.get(f"{api.base_url}/v2/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = httpx.put(f"{api.base_url}/v1/generations")
    assert wrong.status_code == 405 and "error" in wrong.json()


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("TRACE", "/v1/generations", "GET, POST"),
        ("PUT", "/v1/generations", "GET, POST"),
        ("TRACE", "/v1/generations/req_x", "DELETE, GET"),
        ("PATCH", "/v1/generations/req_x/cancel", "POST"),
        ("TRACE", "/v1/account", "GET"),
        ("POST", "/v1/models", "GET"),
    ],
)
def test_unsupported_methods_name_the_allowed_ones(
    api: Api, method: str, path: str, allowed: str
) -> None:
    response = httpx.request(method, f"{api.base_url}{path}")
    assert response.status_code == 405
    assert response.headers["Allow"] == allowed
    error = response.json()["error"]
    assert error["code"] == "method_not_allowed" and allowed in error["message"]


def test_record_indexes_are_in_redis(api: Api) -> None:
    key = api.new_key()
    request_id = api.post(key, VALID).json()["requestId"]
    client = api.runtime.redis
    assert client.zscore(keys.ACTIVE, request_id) is not None
    assert client.zscore(keys.PURGE, request_id) is not None


@pytest.mark.parametrize(
    ("changes", "accepted"),
    [
        ({"n": 4}, True),  # four 2K squares: exactly the bound
        ({"n": 5}, False),
        ({"size": "4K"}, True),
        ({"size": "4K", "n": 2}, False),
        ({"size": "2560x1440", "sequential": "auto", "sequentialOptions": {"maxImages": 5}}, False),
    ],
)
def test_b64_json_is_bounded_before_any_debit(api: Api, changes: dict, accepted: bool) -> None:
    key = api.new_key()
    response = api.post(key, {**VALID, "responseFormat": "b64_json", **changes})
    if accepted:
        assert response.status_code == 202, response.text
        return
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "responseFormat" and "16,777,216 pixels" in error["message"]
    assert api.balance(key) == 1000
