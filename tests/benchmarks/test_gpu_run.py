"""``benchmarks/gpu/run.sh`` on the tiny model and the CPU: its steps write their JSON, the
summary merges them into one Markdown table, and a step that did not finish is listed
without figures (about a minute: 2 steps, batches of 1 and 2, a 1K and a 2K size)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu.summary import main as summarise

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gpu")
    env = {
        **os.environ,
        "OUT": str(folder),
        "XSD_GPU_BENCH_PYTHON": sys.executable,
        "XSD_GPU_BENCH_MODEL": "tiny",
        "XSD_GPU_BENCH_DEVICE": "cpu",
        "XSD_GPU_BENCH_STEPS": "2",
        "XSD_GPU_BENCH_BATCHES": "1,2",
        "XSD_GPU_BENCH_SIZES": "1024x1024,2048x2048",
        "XSD_GPU_BENCH_WARMUP": "0",
        "XSD_GPU_BENCH_REPEATS": "1",
        "XSD_GPU_BENCH_MIN_STEP_S": "1",
        # No compiling on this CPU; the wheels in .whl are for the GPU machine's Python.
        "XSD_GPU_BENCH_ONLY": "fp16-eager,bf16-eager,fp16-eager-2048x2048",
        "XSD_GPU_BENCH_WHEELS": str(folder / "no-wheels"),
    }
    subprocess.run(["bash", "benchmarks/gpu/run.sh"], cwd=ROOT, env=env, check=True, timeout=240)
    return folder


def test_every_step_writes_its_figures(out: Path) -> None:
    expected = {
        "fp16-eager": ("float16", [("1024x1024", 1), ("1024x1024", 2)]),
        "bf16-eager": ("bfloat16", [("1024x1024", 1), ("1024x1024", 2)]),
        "fp16-eager-2048x2048": ("float16", [("1024x1024", 1), ("2048x2048", 1)]),
    }
    for name, (dtype, configs) in expected.items():
        figures = json.loads((out / f"{name}.json").read_text())
        assert figures["machine"]["dtype"] == dtype
        assert figures["settings"]["steps"] == 2
        assert [(r["size"], r["batch_size"]) for r in figures["results"]] == configs
        assert (out / f"{name}.txt").read_text().strip()
    summary = json.loads((out / "summary.json").read_text())
    assert [(s["name"], s["status"]) for s in summary["steps"]] == [
        (name, "ok") for name in expected
    ]


def test_summary_has_one_row_per_configuration(out: Path) -> None:
    text = (out / "summary.md").read_text()
    rows = [
        line for line in text.splitlines() if line.startswith("| fp16") or line.startswith("| bf16")
    ]
    configs = [tuple(cell.strip() for cell in row.split("|")[1:6]) for row in rows[:6]]
    assert configs == [
        ("fp16-eager", "float16", "no", "1024x1024", "1"),
        ("fp16-eager", "float16", "no", "1024x1024", "2"),
        ("bf16-eager", "bfloat16", "no", "1024x1024", "1"),
        ("bf16-eager", "bfloat16", "no", "1024x1024", "2"),
        ("fp16-eager-2048x2048", "float16", "no", "1024x1024", "1"),
        ("fp16-eager-2048x2048", "float16", "no", "2048x2048", "1"),
    ]
    assert "tiny on cpu" in text
    assert len(rows) == 9  # and one outcome row per step


def test_a_step_that_did_not_finish_is_listed_without_figures(out: Path, tmp_path: Path) -> None:
    (tmp_path / "fp16-eager.json").write_text((out / "fp16-eager.json").read_text())
    (tmp_path / "steps.tsv").write_text(
        "fp16-eager\tok\t20\t0\tfloat16, eager\n"
        "fp16-compiled\ttimed out after 180s\t180\t124\tfloat16, torch.compile\n"
        "bf16-compiled\tskipped (budget)\t0\t0\tbfloat16, torch.compile\n"
    )
    merged = summarise([str(tmp_path)])
    assert [s["figures"] is None for s in merged["steps"]] == [False, True, True]
    text = (tmp_path / "summary.md").read_text()
    assert "| fp16-compiled | float16, torch.compile | timed out after 180s | 180 |" in text
    assert "| bf16-compiled | bfloat16, torch.compile | skipped (budget) | 0 |" in text
