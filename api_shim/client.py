"""A small typed client for the xSD 4.5 API, and the webhook verifier users import.

::

    from api_shim.client import XsdClient, verify_webhook

    with XsdClient("https://xsd.internal", "xm_live_...") as client:
        job = client.create_generation(endUserEmail="alice@your-product.com",
                                       model="xSD4.5", prompt="A lighthouse at dawn")
        done = client.wait(job["requestId"])
        # or follow it as it runs: status, queue position, denoising steps
        for event in client.stream(job["requestId"]):
            print(event.event, event.data["status"], event.data.get("progress"))
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from scheduler import SignatureError, verify

from .exceptions import ApiError, ImageUnavailable, XsdError
from .sse import ServerEvent, parse_events

__all__ = [
    "XsdClient",
    "XsdError",
    "ApiError",
    "ImageUnavailable",
    "verify_webhook",
    "SignatureError",
    "ServerEvent",
    "TERMINAL_STATUSES",
]

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "expired"})
# The first wait before retrying a call, doubled after each try up to the cap.
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 8.0


# The code of an error answer that is not in the error format (a proxy's page, say).
_NOT_AN_API_ERROR = "http_error"


def verify_webhook(secret: str, body: bytes, headers: Any, *, now: float | None = None) -> None:
    """Verify a delivery from its raw body and headers (any case-insensitive mapping);
    raise :class:`SignatureError` unless it is authentic and at most five minutes old."""
    lowered = {k.lower(): v for k, v in dict(headers).items()}
    verify(
        secret,
        body,
        signature=lowered.get("x-xmode-signature"),
        timestamp=lowered.get("x-xmode-timestamp"),
        now=now,
    )


class XsdClient:
    """Synchronous client; use as a context manager or call :meth:`close`.

    A call that meets ``503 service_unavailable`` or a connection that fails is tried
    again with backoff (honouring ``Retry-After``) for up to ``retry_seconds``. A call whose
    answer was lost after it was sent is retried only when that is safe: reads, and a POST
    of a generation, which always carries an ``Idempotency-Key`` (one is made up when the
    caller gives none), so a retry never charges twice.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        retry_seconds: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retry_seconds = retry_seconds
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> XsdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release connections."""
        self._http.close()

    def _call(self, method: str, path: str, *, replayable: bool = False, **kwargs: Any) -> Any:
        """One API call, retried as the class says; ``replayable`` marks a call that is
        safe to send again after its answer was lost."""
        deadline = time.monotonic() + self.retry_seconds
        wait = RETRY_FIRST_SECONDS
        while True:
            unavailable: httpx.Response | None = None
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if not (unsent or replayable or method == "GET"):
                    raise
                retry_in = wait
            else:
                if response.status_code != 503:
                    return self._answer(response)
                unavailable = response
                retry_in = max(wait, float(response.headers.get("Retry-After") or 0))
            if time.monotonic() + retry_in > deadline:
                if unavailable is not None:
                    return self._answer(unavailable)  # raises ApiError(503 ...)
                raise TimeoutError(f"{method} {path} kept failing for {self.retry_seconds:.0f} s.")
            time.sleep(retry_in)
            wait = min(RETRY_MAX_SECONDS, wait * 2)

    @staticmethod
    def _answer(response: httpx.Response) -> Any:
        if response.is_error:
            try:
                error = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                raise ApiError(
                    _NOT_AN_API_ERROR, response.text[:200], status=response.status_code
                ) from None
            raise ApiError(
                error["code"],
                error["message"],
                status=response.status_code,
                param=error.get("param"),
            )
        return response.json()

    def create_generation(
        self, *, idempotency_key: str | None = None, **body: Any
    ) -> dict[str, Any]:
        """POST /v1/generations with the spec's field names; returns the queued record.
        Retries reuse the ``Idempotency-Key`` (a new one when none is given)."""
        headers = {"Idempotency-Key": idempotency_key or f"xsd-client-{uuid.uuid4()}"}
        payload = {k: v for k, v in body.items() if v is not None}
        return self._call("POST", "/v1/generations", json=payload, headers=headers, replayable=True)

    def get_generation(self, request_id: str) -> dict[str, Any]:
        """GET /v1/generations/:id."""
        return self._call("GET", f"/v1/generations/{request_id}")

    def list_generations(
        self, *, end_user_email: str | None = None, limit: int = 20, cursor: str | None = None
    ) -> dict[str, Any]:
        """One page of records, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if end_user_email:
            params["endUserEmail"] = end_user_email
        if cursor:
            params["cursor"] = cursor
        return self._call("GET", "/v1/generations", params=params)

    def cancel_generation(self, request_id: str) -> dict[str, Any]:
        """Cancel a queued generation."""
        return self._call("POST", f"/v1/generations/{request_id}/cancel")

    def delete_generation(self, request_id: str) -> dict[str, Any]:
        """Delete a generation and its images."""
        return self._call("DELETE", f"/v1/generations/{request_id}")

    def account(self) -> dict[str, Any]:
        """The account and its balance."""
        return self._call("GET", "/v1/account")

    def wait(
        self,
        request_id: str,
        *,
        interval: float = 5.0,
        timeout: float = 900.0,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the generation is terminal (the spec recommends every 5 s)."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.get_generation(request_id)
            if on_update:
                on_update(record)
            if record["status"] in TERMINAL_STATUSES:
                return record
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{request_id} is still {record['status']} after {timeout:.0f} s."
                )
            time.sleep(interval)

    def stream(
        self, request_id: str, *, timeout: float = 900.0, poll_interval: float = 5.0
    ) -> Iterator[ServerEvent]:
        """The generation's changes as they happen, from ``GET /v1/generations/:id/events``:
        ``status`` and ``progress`` events carrying the record, then ``done`` with the final
        record. A dropped or ended connection is reopened with ``Last-Event-ID`` (nothing
        seen is sent again); a server without the endpoint is polled every
        ``poll_interval`` seconds instead, giving the same events without ids."""
        deadline = time.monotonic() + timeout
        last_id: str | None = None
        wait = RETRY_FIRST_SECONDS
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with self._http.stream(
                    "GET", f"/v1/generations/{request_id}/events", headers=headers
                ) as response:
                    if response.status_code in (404, 405) or (
                        response.is_success
                        and not response.headers.get("content-type", "").startswith(
                            "text/event-stream"
                        )
                    ):
                        yield from self._polled(request_id, deadline, poll_interval)
                        return
                    if response.is_error:
                        response.read()
                        if response.status_code != 503:
                            self._answer(response)  # raises its ApiError
                    else:
                        for event in parse_events(response.iter_lines()):
                            if event.event == "error":
                                error = event.data["error"]
                                if error["code"] != "service_unavailable":
                                    raise ApiError(
                                        error["code"], error["message"], param=error.get("param")
                                    )
                                break
                            last_id = event.id or last_id
                            wait = RETRY_FIRST_SECONDS
                            yield event
                            if event.event == "done":
                                return
            except httpx.TransportError:
                pass
            # The stream ended before the record did (or the service was away): reopen it.
            if time.monotonic() + wait > deadline:
                raise TimeoutError(f"{request_id} did not finish within {timeout:.0f} s.")
            time.sleep(wait)
            wait = min(RETRY_MAX_SECONDS, wait * 2)

    def _polled(self, request_id: str, deadline: float, interval: float) -> Iterator[ServerEvent]:
        """:meth:`stream` by polling, for a server without the events endpoint (a record
        that does not exist raises as GET does)."""
        seen: tuple[Any, ...] | None = None
        while True:
            record = self.get_generation(request_id)
            state = (record["status"], record.get("progress"), record.get("queue"))
            if record["status"] in TERMINAL_STATUSES:
                yield ServerEvent("done", record)
                return
            if state != seen:
                kind = "progress" if seen is not None and seen[0] == state[0] else "status"
                yield ServerEvent(kind, record)
                seen = state
            if time.monotonic() + interval > deadline:
                raise TimeoutError(f"{request_id} is still {record['status']}.")
            time.sleep(interval)

    def download(self, image: dict[str, Any], path: Path) -> Path:
        """Save one image item (``url`` or ``b64Json``) to ``path``."""
        if "b64Json" in image:
            import base64

            path.write_bytes(base64.b64decode(image["b64Json"]))
            return path
        if "url" not in image:
            raise ImageUnavailable(
                image.get("error", {}).get("code", "storage_failed"), "No image data."
            )
        with httpx.stream("GET", image["url"], timeout=60.0) as response:
            response.raise_for_status()
            with path.open("wb") as handle:
                for chunk in response.iter_bytes():
                    handle.write(chunk)
        return path
