"""The sliding-window limiter, with a controlled clock against real Redis."""

from __future__ import annotations

import pytest
import redis

from scheduler.errors import RateLimited
from scheduler.redis.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0  # on a window boundary

    def __call__(self) -> float:
        return self.now


def test_limit_within_a_window(redis_client: redis.Redis) -> None:
    clock = Clock()
    limiter = RateLimiter(redis_client, clock=clock)
    statuses = [limiter.hit("k", limit=5) for _ in range(5)]
    assert [s.remaining for s in statuses] == [4, 3, 2, 1, 0]
    with pytest.raises(RateLimited) as caught:
        limiter.hit("k", limit=5)
    assert caught.value.retry_after >= 1 and caught.value.limit == 5
    limiter.hit("other-key", limit=5)  # keys are independent


def test_previous_window_still_counts(redis_client: redis.Redis) -> None:
    clock = Clock()
    limiter = RateLimiter(redis_client, clock=clock)
    for _ in range(10):
        limiter.hit("k", limit=10)
    clock.now += 60 + 15  # a quarter into the next window: 75% of 10 still counts
    allowed = 0
    while True:
        try:
            limiter.hit("k", limit=10)
            allowed += 1
        except RateLimited as exc:
            retry_after = exc.retry_after
            break
    assert allowed == 2  # 7.5 + 2 <= 10 < 7.5 + 3
    clock.now += retry_after
    limiter.hit("k", limit=10)  # the advertised wait is enough


def test_no_double_burst_across_the_boundary(redis_client: redis.Redis) -> None:
    clock = Clock()
    limiter = RateLimiter(redis_client, clock=clock)
    clock.now += 59
    for _ in range(10):
        limiter.hit("k", limit=10)
    clock.now += 2  # just into the next window: a fixed window would allow 10 more
    with pytest.raises(RateLimited):
        limiter.hit("k", limit=10)
