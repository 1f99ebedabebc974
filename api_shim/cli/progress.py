"""What ``xsd generate`` shows while a generation runs: a bar on a terminal, plain lines
elsewhere.

On a terminal one line is redrawn in place: the queue position while queued, a bar of the
denoising steps while processing. Anywhere else (a pipe, a log file, CI) each change is a
line of its own, with nothing that redraws. Either way each saved image gets a line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

__all__ = ["BAR_WIDTH", "ProgressDisplay", "describe"]

BAR_WIDTH = 24
# Erase to the end of the line: a shorter line must not leave the end of a longer one.
_ERASE = "\x1b[K"


def _bar(fraction: float) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * BAR_WIDTH)
    return "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "]"


def describe(record: dict[str, Any], *, bar: bool) -> str:
    """What the record says of the job's progress: its place in the queue, its steps (with
    a bar when ``bar``), or nothing more than its status."""
    status = record["status"]
    queue = record.get("queue")
    # The position is null while the job is still being prepared: nothing to say yet.
    if status == "queued" and queue and queue.get("position") is not None:
        text = f"position {queue['position']} in the queue"
        if queue.get("estimatedStartAt"):
            text += f", starts ~{queue['estimatedStartAt']}"
        return text
    progress = record.get("progress")
    if status == "processing" and progress:
        percent = round(100 * progress["fraction"])
        steps = f"{progress['stepsDone']}/{progress['stepsTotal']} steps"
        return (
            f"{_bar(progress['fraction'])} {percent:3d}%  {steps}"
            if bar
            else f"{steps} ({percent}%)"
        )
    return ""


class ProgressDisplay:
    """Shows each record the event stream (or polling) delivers, on stderr."""

    def __init__(self, *, interactive: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.interactive = interactive
        self._clock = clock
        self._started = clock()
        self._last = ""
        self._open = False

    def update(self, record: dict[str, Any]) -> None:
        """Show the record's state (a line that repeats the last is not written again)."""
        detail = describe(record, bar=self.interactive)
        line = f"{record['requestId']}  {record['status']:<10}  {detail}".rstrip()
        if line == self._last and not self.interactive:
            return
        self._last = line
        elapsed = f"{self._clock() - self._started:6.1f} s"
        if self.interactive:
            # color: click would strip the erase sequence from a stream it takes for no tty.
            click.echo(f"\r{line}  {elapsed}{_ERASE}", err=True, nl=False, color=True)
            self._open = True
        else:
            click.echo(f"{line}  {elapsed}", err=True)

    def saved(self, index: int, total: int, path: object) -> None:
        """One image written to disk."""
        self.finish()
        click.echo(f"saved image {index + 1}/{total}: {path}", err=True)

    def finish(self) -> None:
        """End the redrawn line, if one is open."""
        if self._open:
            click.echo("", err=True)
            self._open = False
