"""The per-process runtime: settings, Redis connection and the stores built on it.

Each xsd process (API, worker, beat) builds one :class:`Runtime` at start; Celery task
bodies reach it through :func:`current`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property

import redis

from pipeline import DecodeBudget, ModelRegistry
from storage import ObjectStore

from .jobs.objects import make_store
from .jobs.store import JobStore
from .net.policy import NetPolicy
from .redis.accounts import Accounts
from .redis.embedded import find_running
from .redis.ratelimit import RateLimiter
from .settings import Settings
from .stages.celery_app import configure
from .stages.moderation import Moderator

__all__ = ["Runtime", "resolve_redis_url", "init", "current"]

log = logging.getLogger(__name__)


def resolve_redis_url(settings: Settings) -> str:
    """``XSD_REDIS_URL``, else the embedded server running under the data directory."""
    if settings.redis_url:
        return settings.redis_url
    running = find_running(settings.redis_dir)
    if running is None:
        raise RuntimeError(
            "No Redis to talk to: set XSD_REDIS_URL, or start everything with `xsd up`."
        )
    return running


@dataclass
class Runtime:
    """Everything a process needs to serve or run jobs."""

    settings: Settings
    redis_url: str
    # Built with the runtime rather than on first use, so concurrent first decodes cannot
    # each make a budget of their own.
    decode_budget: DecodeBudget = field(init=False)

    def __post_init__(self) -> None:
        self.decode_budget = DecodeBudget(self.settings.reference_decode_budget_bytes)

    @cached_property
    def redis(self) -> redis.Redis:
        """Shared, thread-safe connection pool (strings decoded)."""
        return redis.Redis.from_url(self.redis_url, decode_responses=True, health_check_interval=30)

    @cached_property
    def jobs(self) -> JobStore:
        """Job records."""
        return JobStore(self.redis)

    @cached_property
    def accounts(self) -> Accounts:
        """Accounts and keys."""
        return Accounts(self.redis, pepper=self.settings.pepper)

    @cached_property
    def limiter(self) -> RateLimiter:
        """Per-key rate limits."""
        return RateLimiter(self.redis)

    @cached_property
    def store(self) -> ObjectStore:
        """The object store."""
        return make_store(self.settings)

    @cached_property
    def registry(self) -> ModelRegistry:
        """Model aliases."""
        return ModelRegistry.from_config(self.settings.model_path)

    @cached_property
    def moderator(self) -> Moderator:
        """Prompt checks."""
        return Moderator(self.settings.moderation_blocklist)

    @cached_property
    def net_policy(self) -> NetPolicy:
        """What outbound URLs may reach."""
        if self.settings.allow_private_urls:
            log.warning(
                "XSD_ALLOW_PRIVATE_URLS=1: webhooks and references may reach http and private "
                "addresses. Never run a public deployment like this."
            )
        return NetPolicy(allow_private=self.settings.allow_private_urls)


_current: Runtime | None = None


def init(settings: Settings | None = None) -> Runtime:
    """Build this process's runtime and point Celery at its broker."""
    global _current
    settings = settings or Settings()
    runtime = Runtime(settings=settings, redis_url=resolve_redis_url(settings))
    configure(settings, runtime.redis_url)
    _current = runtime
    return runtime


def current() -> Runtime:
    """This process's runtime, built from the environment on first use."""
    return _current or init()
