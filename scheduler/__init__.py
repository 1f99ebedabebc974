"""Job lifecycle: Celery app, job records in Redis, billing, webhooks, reaper.

This module is the facade: what ``api_shim`` may use of the scheduler, re-exported from the
rooms that hold it (``tests/test_architecture.py`` holds the shim to it). Each name is
imported on first use, so ``from scheduler import Settings`` loads neither Celery nor the
stages, and the HTTP shim never loads torch. Modules inside ``scheduler/`` import from their
rooms, never from here: the facade sits above them all.
"""

import importlib
import typing

# Where each public name lives, by room.
_ROOMS: dict[str, tuple[str, ...]] = {
    "scheduler.errors": (
        "AuthenticationFailed",
        "Conflict",
        "Forbidden",
        "InsufficientBalance",
        "InvalidRequest",
        "NotFound",
        "RateLimited",
        "SchedulerError",
        "UnsafeURL",
    ),
    "scheduler.settings": ("Settings",),
    "scheduler.metrics": ("InFlightCollector", "QueueDepthCollector", "register_once"),
    "scheduler.runtime": ("Runtime", "init"),
    "scheduler.service": ("Service",),
    "scheduler.jobs.inputs": (
        "MAX_IMAGES",
        "MAX_PROMPT_CHARS",
        "MAX_PROMPT_TOKENS",
        "MAX_REFERENCES",
        "MAX_SEED",
        "frame_count",
        "prompt_tokens",
    ),
    "scheduler.jobs.objects": ("FILES_PATH", "open_signed_file"),
    "scheduler.jobs.records": ("JobInput",),
    "scheduler.jobs.sizes": ("AspectRatio", "SizeError", "parse_size"),
    "scheduler.jobs.states": ("JobErrorCode", "JobStatus"),
    "scheduler.net.policy": ("NetPolicy", "check_url"),
    "scheduler.net.signing": ("SignatureError", "verify"),
    "scheduler.redis.accounts": ("API_KEY_PREFIX", "Accounts", "Principal", "key_id_of"),
    "scheduler.redis.embedded": (
        "EmbeddedRedis",
        "embedded_or_running",
        "find_running",
        "free_port",
    ),
    "scheduler.redis.outage": ("OUTAGE_ERRORS", "RETRY_AFTER_SECONDS"),
    "scheduler.redis.ratelimit": ("RateStatus",),
    "scheduler.process.worker": ("EXIT_MODEL_UNAVAILABLE", "drain", "run_beat", "run_worker"),
}
_HOME = {name: module for module, names in _ROOMS.items() for name in names}

__all__ = sorted(_HOME, key=str.casefold)


def __getattr__(name: str) -> typing.Any:
    """Import a public name from its room on first use (PEP 562)."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'scheduler' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
