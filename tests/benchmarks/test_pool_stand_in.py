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
            "--queued", "2",
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
        # The window holds whole passes: images counted as the worker produced them.
        assert phase["passes"] >= 1 and phase["images"] >= phase["n"]
        # The stand-in's ideal bounds what the pool can deliver (up to the polling of
        # the window's ends).
        assert 0 < phase["of_ideal"] <= 1.1
        assert phase["gpu_idle_fraction"] >= 0
        # Every stage the worker went through in the window was observed.
        assert phase["mean"]["xsd_png_encode_seconds"] > 0
        assert phase["mean"]["xsd_claim_seconds"] > 0
        assert phase["mean"]["xsd_record_success_seconds"] > 0
        assert phase["mean"]["xsd_webhook_delivery_seconds"] > 0
