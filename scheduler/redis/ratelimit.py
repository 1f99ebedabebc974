"""Per-key rate limits in Redis, with a sliding window.

A fixed one-minute window lets a client send twice the limit across a window boundary; the
sliding estimate (the previous window weighted by how much of it still overlaps) does not,
and costs two counters per key. Every API process shares the counters, so the limit holds
however many replicas serve the key.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis

from ..errors import RateLimited
from . import keys
from .scripts import Scripts

__all__ = ["RateStatus", "RateLimiter"]

WINDOW_SECONDS = 60


@dataclass(frozen=True)
class RateStatus:
    """What the ``X-RateLimit-*`` headers report after an allowed call."""

    limit: int
    remaining: int
    reset_seconds: int


class RateLimiter:
    """Sliding-window limiter over shared Redis counters."""

    def __init__(self, client: redis.Redis, *, clock=time.time) -> None:
        self._scripts = Scripts(client)
        self._clock = clock

    def hit(self, bucket: str, *, limit: int) -> RateStatus:
        """Count one call against ``bucket``; raise :class:`RateLimited` when over."""
        now = self._clock()
        window = int(now // WINDOW_SECONDS)
        elapsed = (now % WINDOW_SECONDS) / WINDOW_SECONDS
        allowed, current, previous = self._scripts.ratelimit(
            keys=[keys.rate_window(bucket, window), keys.rate_window(bucket, window - 1)],
            args=[limit, elapsed, WINDOW_SECONDS * 1000],
        )
        reset = math.ceil((1 - elapsed) * WINDOW_SECONDS)
        if allowed:
            estimate = previous * (1 - elapsed) + current
            return RateStatus(
                limit=limit, remaining=max(0, math.floor(limit - estimate)), reset_seconds=reset
            )
        retry_after = _seconds_until_allowed(limit, int(current), int(previous), elapsed)
        raise RateLimited(
            f"Rate limit of {limit} requests per minute exceeded for this API key; retry in "
            f"{retry_after} s.",
            limit=limit,
            retry_after=retry_after,
        )


def _seconds_until_allowed(limit: int, current: int, previous: int, elapsed: float) -> int:
    """Smallest wait after which one more call fits under the sliding estimate."""
    if current + 1 <= limit and previous > 0:
        # Still in this window: wait until the previous window's weight has decayed enough.
        fraction = 1 - (limit - current - 1) / previous
        wait = (fraction - elapsed) * WINDOW_SECONDS
    else:
        # Only the next window helps; there this window's count becomes the decaying one.
        fraction = 1 - (limit - 1) / current if current else 0.0
        wait = (1 - elapsed + max(0.0, fraction)) * WINDOW_SECONDS
    return max(1, math.ceil(wait))
