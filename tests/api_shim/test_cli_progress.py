"""What ``xsd generate`` prints while it follows a generation: plain lines off a terminal,
one redrawn line with a bar on one."""

from __future__ import annotations

import pytest

from api_shim.cli.progress import BAR_WIDTH, ProgressDisplay, describe

QUEUED = {
    "requestId": "req_abc",
    "status": "queued",
    "queue": {"position": 3, "estimatedStartAt": "2026-12-01T14:05:00.000Z"},
}
PROCESSING = {
    "requestId": "req_abc",
    "status": "processing",
    "progress": {"fraction": 0.425, "stepsDone": 17, "stepsTotal": 40},
}
SUCCEEDED = {"requestId": "req_abc", "status": "succeeded", "images": []}


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_queue_position_and_steps_are_described() -> None:
    assert describe(QUEUED, bar=False) == (
        "position 3 in the queue, starts ~2026-12-01T14:05:00.000Z"
    )
    unrouted = {**QUEUED, "queue": {"position": None, "estimatedStartAt": None}}
    assert describe(unrouted, bar=True) == ""
    assert describe({**QUEUED, "queue": {"position": 1, "estimatedStartAt": None}}, bar=True) == (
        "position 1 in the queue"
    )
    assert describe({"requestId": "r", "status": "queued"}, bar=False) == ""
    assert describe(PROCESSING, bar=False) == "17/40 steps (42%)"
    filled = round(0.425 * BAR_WIDTH)
    assert describe(PROCESSING, bar=True) == (
        "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "]  42%  17/40 steps"
    )
    assert describe({**SUCCEEDED, "progress": PROCESSING["progress"]}, bar=True) == ""


def test_off_a_terminal_each_change_is_a_plain_line(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    display = ProgressDisplay(interactive=False, clock=clock)
    for record in (QUEUED, QUEUED, PROCESSING, SUCCEEDED):
        clock.now += 1.5
        display.update(record)
    display.finish()
    display.saved(0, 1, "out/req_abc_0.png")
    assert capsys.readouterr().err.splitlines() == [
        "req_abc  queued      position 3 in the queue, starts ~2026-12-01T14:05:00.000Z     1.5 s",
        "req_abc  processing  17/40 steps (42%)     4.5 s",
        "req_abc  succeeded     6.0 s",
        "saved image 1/1: out/req_abc_0.png",
    ]


def test_on_a_terminal_one_line_is_redrawn(capsys: pytest.CaptureFixture[str]) -> None:
    display = ProgressDisplay(interactive=True, clock=Clock())
    display.update(QUEUED)
    display.update(PROCESSING)
    display.saved(0, 2, "a.png")
    err = capsys.readouterr().err
    filled = round(0.425 * BAR_WIDTH)
    bar = "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "]"
    assert err == (
        "\rreq_abc  queued      position 3 in the queue, starts ~2026-12-01T14:05:00.000Z"
        "     0.0 s\x1b[K"
        f"\rreq_abc  processing  {bar}  42%  17/40 steps     0.0 s\x1b[K"
        "\nsaved image 1/2: a.png\n"
    )
