"""``python -m benchmarks.fairness``: a flood and a light account on the whole pool against
the stand-in model, briefly; its figures come out and are sane."""

from __future__ import annotations

import json

import pytest

from benchmarks.fairness import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_a_small_flood(tmp_path) -> None:
    path = tmp_path / "fairness.json"
    main(
        [
            "--stand-in", "0.02",
            "--size", "1920x1920",
            "--flood-jobs", "4",
            "--flood-n", "2",
            "--light-jobs", "2",
            "--json", str(path),
        ]
    )  # fmt: skip
    figures = json.loads(path.read_text())
    assert figures["flood"] == {"jobs": 4, "n": 2, "images": 8}
    for phase in ("light_wait_idle", "light_wait_under_flood"):
        assert 0 <= figures[phase]["p50_s"] <= figures[phase]["p99_s"]
    assert figures["pool_images_per_second_flood_alone"] > 0
    assert figures["flood_images_per_second_with_light"] > 0
