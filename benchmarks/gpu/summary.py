"""Merges what a ``benchmarks/gpu/run.sh`` run finished into ``summary.json`` and
``summary.md``.

``python -m benchmarks.gpu.summary OUT`` reads ``OUT/steps.tsv`` (one line per step the
script started or skipped: name, status, seconds, exit code, the step's description) and
each finished step's ``OUT/<name>.json`` (``python -m benchmarks.pipeline --json``). A step
that timed out or failed has no JSON; its line still says so. Standard library only, so the
summary is written even when the pipeline's packages did not install.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["PSNR_BAR_DB", "main", "markdown", "merge"]

# DESIGN's batch-invariance bar on a GPU: the first request alone against the same request
# at position 0 of a batch.
PSNR_BAR_DB = 45.0


def merge(out: Path) -> dict[str, Any]:
    """The steps in the order they ran, each with its figures where it finished."""
    steps = []
    for line in (out / "steps.tsv").read_text().splitlines():
        name, status, seconds, code, what = line.split("\t", 4)
        figures_path = out / f"{name}.json"
        steps.append(
            {
                "name": name,
                "what": what,
                "status": status,
                "seconds": float(seconds),
                "exit_code": int(code),
                "figures": json.loads(figures_path.read_text()) if figures_path.exists() else None,
            }
        )
    return {"steps": steps}


def _invariance(inv: dict[str, Any] | None, gpu: bool) -> tuple[str, str, str]:
    """Largest difference, PSNR and, on a GPU, whether it meets the bar."""
    if inv is None:
        return "-", "-", "-"
    psnr = inv["psnr_db"]
    verdict = "yes" if psnr is None or psnr >= PSNR_BAR_DB else "NO"
    return (
        f"{inv['max_abs_diff_255']:.0f}",
        "inf" if psnr is None else f"{psnr:.1f}",
        verdict if gpu else "-",
    )


def markdown(merged: dict[str, Any]) -> str:
    """One Markdown table of every finished configuration, then the steps' outcomes."""
    finished = [step for step in merged["steps"] if step["figures"]]
    lines = ["# Pipeline benchmark (GPU run)", ""]
    if finished:
        machine = finished[0]["figures"]["machine"]
        settings = finished[0]["figures"]["settings"]
        lines += [
            f"{settings['model']} on {machine['device']} ({machine['device_name']}), torch "
            f"{machine['torch']}, CUDA {machine['cuda']}, diffusers {machine['diffusers']}, "
            f"Python {machine['python']}; {settings['steps']} steps, guidance "
            f"{settings['guidance']}, warmup {settings['warmup']}, repeats {settings['repeats']}"
            f"; {machine['date']}",
            "",
            "| step | dtype | compiled | size | batch | img/s | s/img | peak MiB | diff/255 "
            f"| PSNR dB | >= {PSNR_BAR_DB:.0f} dB | vs 1st size |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
    best = None
    for step in finished:
        figures = step["figures"]
        machine = figures["machine"]
        gpu = machine["device"].startswith("cuda")
        options = machine["acceleration"]
        compiled = "no" if options["compile"] == "off" else options["compile"]
        dtype = machine["dtype"] + (
            "" if options["quantize"] == "none" else f"+{options['quantize']}"
        )
        for r in figures["results"]:
            diff, psnr, verdict = _invariance(r["invariance"], gpu)
            lines.append(
                f"| {step['name']} | {dtype} | {compiled} | {r['size']} "
                f"| {r['batch_size']} | {r['images_per_second']:.3f} "
                f"| {r['seconds_per_image']:.3f} | {r['peak_memory']['bytes'] / 2**20:.0f} "
                f"| {diff} | {psnr} | {verdict} | {r['relative_to_first_size']:.2f} |"
            )
        anchor = figures.get("mlperf_anchor")
        if anchor and (
            best is None or anchor["best_images_per_second"] > best[1]["best_images_per_second"]
        ):
            best = (step["name"], anchor)
    if best:
        name, anchor = best
        lines += [
            "",
            f"Best: {anchor['best_images_per_second']:.3f} images/s ({name}) = "
            f"{anchor['ratio']:.2f}x MLPerf's {anchor['images_per_second']} "
            f"({anchor['what']}).",
        ]
    lines += ["", "| step | what | status | seconds |", "|---|---|---|---:|"]
    for step in merged["steps"]:
        lines.append(
            f"| {step['name']} | {step['what']} | {step['status']} | {step['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Writes ``summary.json`` and ``summary.md`` into the folder given; returns the merge."""
    (folder,) = argv if argv is not None else sys.argv[1:]
    out = Path(folder)
    merged = merge(out)
    (out / "summary.json").write_text(json.dumps(merged, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(merged))
    return merged


if __name__ == "__main__":
    main()
