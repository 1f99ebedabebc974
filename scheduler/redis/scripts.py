"""The Lua scripts under ``scheduler/lua``, registered on a Redis client.

Every change that must be atomic (debit with record creation, a status change with its
refund) is one script, so no crash between two commands can charge twice or lose a refund.
The scripts that claim, finish or delete jobs start with ``lua/_shared.lua`` (claiming and
the in-flight counts), so every path changes those counts the same way.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import redis
from redis.commands.core import Script

__all__ = ["Scripts"]


@cache
def _source(name: str) -> str:
    return resources.files("scheduler.redis").joinpath("lua", f"{name}.lua").read_text("utf-8")


def _with_shared(name: str) -> str:
    return _source("_shared") + _source(name)


class Scripts:
    """Registered scripts, one attribute each."""

    def __init__(self, client: redis.Redis) -> None:
        self.accept: Script = client.register_script(_source("accept"))
        self.claim: Script = client.register_script(_with_shared("claim"))
        self.pick: Script = client.register_script(_with_shared("pick"))
        self.enqueue: Script = client.register_script(_source("enqueue"))
        self.requeue: Script = client.register_script(_source("requeue"))
        self.renew: Script = client.register_script(_source("renew"))
        self.progress: Script = client.register_script(_source("progress"))
        self.finish: Script = client.register_script(_with_shared("finish"))
        self.delete: Script = client.register_script(_with_shared("delete"))
        self.ratelimit: Script = client.register_script(_source("ratelimit"))
