"""``python -m benchmarks.chaos --quick``: a GPU worker SIGKILLed mid-batch and Redis
restarted mid-run, on the real pool (separate processes, S3 on moto, a webhook receiver).
Every job answered 202 ends terminal within the bound, none finishes twice, and the
ledger matches the images delivered to the xToken."""

from __future__ import annotations

import json

import pytest

from benchmarks.chaos import QUICK_SCENARIOS, main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = tmp_path_factory.mktemp("chaos") / "chaos.json"
    returned = main(["--quick", "--json", str(path)])
    written = json.loads(path.read_text())
    assert written["scenarios"].keys() == returned["scenarios"].keys()
    return written


def test_the_faults_happened(report: dict) -> None:
    scenarios = report["scenarios"]
    assert tuple(scenarios) == QUICK_SCENARIOS
    events = {name: " | ".join(e["event"] for e in s["events"]) for name, s in scenarios.items()}
    assert "SIGKILL gpu-worker" in events["gpu-kill"], events
    assert "Redis stopped with SIGTERM" in events["redis-restart"], events
    assert "Redis started again" in events["redis-restart"], events
    for figures in scenarios.values():
        assert figures["submitted"] == figures["planned"] > 0, figures["not_accepted"]


@pytest.mark.parametrize("scenario", QUICK_SCENARIOS)
def test_nothing_stuck_lost_doubled_or_mischarged(report: dict, scenario: str) -> None:
    figures = report["scenarios"][scenario]
    problems = json.dumps(figures["problem_jobs"], indent=1)[:4000]
    assert figures["stuck"] == 0, problems
    assert figures["lost"] == 0, problems
    assert figures["finished_twice"] == 0, problems
    assert figures["ledger"]["off"] == 0, figures["ledger"]
    assert figures["ledger"]["unknown_records"] == []
    assert figures["webhooks"]["invalid_signatures"] == 0
    assert figures["webhooks"]["missing"] == 0, problems
    assert figures["images"]["url_without_object"] == 0, problems
    assert figures["succeeded"] + sum(figures["failed_by_code"].values()) == figures["submitted"]
