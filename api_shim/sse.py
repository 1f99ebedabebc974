"""Server-Sent Events as a client reads them (the WHATWG event-stream format): lines in,
events out."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["ServerEvent", "parse_events"]


@dataclass(frozen=True)
class ServerEvent:
    """One event: its type (``status``, ``progress``, ``done``, ``error``), its data
    (JSON: a record, or an error in the error format) and its id, if it had one."""

    event: str
    data: dict[str, Any]
    id: str | None = None


def parse_events(lines: Iterable[str]) -> Iterator[ServerEvent]:
    """The events of a stream's lines. Comments (keepalives) and ``retry`` are skipped;
    an event is dispatched at the blank line that ends it."""
    event, data, ident = "message", [], None
    for line in lines:
        if not line:
            if data:
                yield ServerEvent(event, json.loads("\n".join(data)), ident)
            event, data, ident = "message", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            ident = value
