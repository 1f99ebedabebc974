"""``python -m benchmarks.pool --stand-in``: the whole pool against the benchmark stand-in
model, briefly; its figures come out and are sane."""

from __future__ import annotations

import json

import pytest

from benchmarks.pool import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_the_pool_at_stand_in_rates(tmp_path, capsys) -> None:
    path = tmp_path / "pool.json"
    main(
        [
            "--stand-in", "0.05",
            "--sizes", "1920x1920",
            "--n", "1,2",
            "--seconds", "4",
            "--in-flight", "2",
            "--json", str(path),
        ]
    )  # fmt: skip
    figures = json.loads(path.read_text())
    assert figures["stand_in_seconds_per_megapixel"] == 0.05
    assert [(phase["size"], phase["n"]) for phase in figures["phases"]] == [
        ("1920x1920", 1),
        ("1920x1920", 2),
    ]
    for phase in figures["phases"]:
        assert phase["ideal_images_per_second"] == pytest.approx(1024**2 / (0.05 * 1920**2))
        assert phase["images"] > 0
        # The stand-in's ideal bounds what the pool can deliver.
        assert 0 < phase["of_ideal"] <= 1.1
        # Idle time is counted when the next pass starts, so a gap that began before a
        # short window can take the fraction past 1.
        assert phase["gpu_idle_fraction"] >= 0
        assert phase["gpu_batches"] > 0
