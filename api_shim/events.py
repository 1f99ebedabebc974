"""``GET /v1/generations/:id/events``: a record's changes as Server-Sent Events.

The stream polls the record (every :data:`POLL_SECONDS`, one Redis read) and sends an
event whenever what a client watches changes: the status (event ``status``), the
denoising ``progress`` or the ``queue`` position (event ``progress``). Each event's data is
the public record, as a poll returns it (a ``b64_json`` record's images as signed URLs),
and its ``id`` a digest of the watched fields: a client that reconnects with
``Last-Event-ID`` is not sent again the state it has seen. Once the record is terminal the
stream sends it whole as ``done`` and ends. Comments (``: keepalive``) every
:data:`KEEPALIVE_SECONDS` keep proxies from closing a quiet stream; after
:data:`MAX_STREAM_SECONDS` the stream ends so the client reconnects (and no connection
holds a server that is shutting down for long). An error once the stream is under way
(Redis out of reach, the record deleted) is sent as an ``error`` event in the error format
and ends the stream: its status was already sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from scheduler import RateLimited

from .errors import as_api_error, error_body

__all__ = [
    "KEEPALIVE_SECONDS",
    "MAX_STREAMS_PER_KEY",
    "MAX_STREAM_SECONDS",
    "POLL_SECONDS",
    "StreamSlots",
    "event_id",
    "record_events",
    "released",
]

POLL_SECONDS = 1.0
KEEPALIVE_SECONDS = 15.0
MAX_STREAM_SECONDS = 300.0
# Open streams one API process serves one key (each polls Redis twice a second).
MAX_STREAMS_PER_KEY = 20
# What a client waits before it reconnects after the stream ended or broke (ms).
RECONNECT_MS = 1000
# The fields whose change is an event. A queued job's estimated start moves with the clock
# on every read: only its place in the queue counts, or each poll would be an event.
_WATCHED = ("status", "progress")
_TERMINAL = frozenset({"succeeded", "failed", "expired"})


def event_id(view: dict[str, Any]) -> str:
    """The digest of what a client watches in ``view``: equal ids, nothing new."""
    watched = {name: view.get(name) for name in _WATCHED}
    watched["position"] = (view.get("queue") or {}).get("position")
    digest = hashlib.sha256(json.dumps(watched, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _event(name: str, data: dict[str, Any], ident: str | None = None) -> bytes:
    lines = [f"id: {ident}"] if ident else []
    lines += [f"event: {name}", "data: " + json.dumps(data, separators=(",", ":"))]
    return ("\n".join(lines) + "\n\n").encode()


async def record_events(
    first: dict[str, Any],
    poll: Callable[[], Awaitable[dict[str, Any]]],
    *,
    last_event_id: str | None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[bytes]:
    """The stream's bytes, from the record ``first`` read and ``poll`` for the next."""
    started = written = clock()
    yield f"retry: {RECONNECT_MS}\n\n".encode()
    view, sent, status = first, last_event_id, None
    while True:
        ident = event_id(view)
        if view["status"] in _TERMINAL:
            yield _event("done", view, ident)
            return
        if ident != sent:
            name = "progress" if view["status"] == status else "status"
            yield _event(name, view, ident)
            sent, status, written = ident, view["status"], clock()
        elif clock() - written >= KEEPALIVE_SECONDS:
            yield b": keepalive\n\n"
            written = clock()
        if clock() - started >= MAX_STREAM_SECONDS:
            return
        await sleep(POLL_SECONDS)
        try:
            view = await poll()
        except Exception as exc:
            yield _event("error", error_body(as_api_error(exc)))
            return


async def released(
    events: AsyncIterator[bytes], release: Callable[[], None]
) -> AsyncIterator[bytes]:
    """``events``, then ``release`` however the stream ends (its end, an error, the client
    gone)."""
    try:
        async for chunk in events:
            yield chunk
    finally:
        release()


class StreamSlots:
    """The open streams of each key in this process, bounded by ``limit``."""

    def __init__(self, limit: int = MAX_STREAMS_PER_KEY) -> None:
        self.limit = limit
        self._open: Counter[str] = Counter()

    def acquire(self, key_id: str) -> Callable[[], None]:
        """One more stream of ``key_id`` (429 beyond the limit); returns its release, which
        frees the slot once however often it is called (a stream's end and the response's
        background task both call it: a client gone before the stream started reaches only
        the second)."""
        if self._open[key_id] >= self.limit:
            raise RateLimited(
                f"This key has {self.limit} event streams open on this server; close one "
                "or poll GET /v1/generations/:id instead.",
                limit=self.limit,
                retry_after=RECONNECT_MS // 1000,
            )
        self._open[key_id] += 1
        done = False

        def release() -> None:
            nonlocal done
            if done:
                return
            done = True
            self._open[key_id] -= 1
            if not self._open[key_id]:
                del self._open[key_id]

        return release

    def open(self, key_id: str) -> int:
        """How many streams of ``key_id`` are open."""
        return self._open[key_id]
