"""``python -m benchmarks.pipeline`` on the tiny model: the figures it writes are complete
and sane (a few seconds: 2 steps, batches of 1 and 2, one 1K and one 2K size)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.pipeline import main, parse_sizes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def figures(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("bench") / "pipeline.json"
    # fmt: off
    returned = main([
        "--model", "tiny", "--device", "cpu", "--steps", "2", "--batch-sizes", "1,2",
        "--size", "1024x1024,2048x2048", "--repeats", "1", "--warmup", "0",
        "--json", str(path),
    ])
    # fmt: on
    written = json.loads(path.read_text())
    assert written == json.loads(json.dumps(returned))
    return written


def test_records_the_machine_and_settings(figures: dict) -> None:
    machine, settings = figures["machine"], figures["settings"]
    assert machine["device"] == "cpu"
    assert machine["dtype"] == "float32"
    assert machine["device_name"]
    for key in ("torch", "diffusers", "date", "cpu_count"):
        assert machine[key]
    assert settings == {
        "model": "tiny",
        "steps": 2,
        "guidance": 8.0,
        "sizes": ["1024x1024", "2048x2048"],
        "batch_sizes": [1, 2],
        "warmup": 0,
        "repeats": 1,
    }
    assert "mlperf_anchor" not in figures  # only for sdxl-random


def test_every_configuration_has_sane_figures(figures: dict) -> None:
    results = figures["results"]
    assert [(r["size"], r["batch_size"]) for r in results] == [
        ("1024x1024", 1),
        ("1024x1024", 2),
        ("2048x2048", 1),
        ("2048x2048", 2),
    ]
    for r in results:
        assert len(r["seconds_per_batch"]) == 1
        assert r["images_per_second"] > 0
        assert r["seconds_per_image"] == pytest.approx(1 / r["images_per_second"])
        assert r["seconds_per_image"] == pytest.approx(r["seconds_per_batch"][0] / r["batch_size"])
        assert r["peak_memory"]["kind"] == "process_peak_rss"
        assert r["peak_memory"]["bytes"] > 100 * 2**20  # torch alone is more
        assert r["relative_to_first_size"] > 0
    for r in results[:2]:
        assert r["relative_to_first_size"] == 1.0


def test_batch_invariance_is_reported(figures: dict) -> None:
    by_config = {(r["size"], r["batch_size"]): r["invariance"] for r in figures["results"]}
    assert by_config[("1024x1024", 1)] is None
    assert by_config[("2048x2048", 1)] is None
    # DESIGN's CPU bar, composed only and refined: at most 1/255 between alone and batched.
    for size in ("1024x1024", "2048x2048"):
        invariance = by_config[(size, 2)]
        assert invariance["max_abs_diff_255"] <= 1
        assert invariance["psnr_db"] is None or invariance["psnr_db"] > 45


def test_sizes_are_parsed() -> None:
    assert parse_sizes("1024x1024, 2048X1152") == [(1024, 1024), (2048, 1152)]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_sizes("1024")


def test_runs_as_a_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.pipeline", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    for flag in ("--model", "--device", "--steps", "--batch-sizes", "--size", "--json"):
        assert flag in done.stdout
