"""The fast-path benchmark: what each ``XSD_*`` fast-path option does to time and pixels.

``python -m benchmarks.fastpath [--model tiny|sdxl-random] [--device cpu|cuda] [--steps 20]
[--guidance 8] [--size 1024x1024] [--batch 2] [--repeats 2]
[--options int8,fp8,vae-bf16,static] [--json PATH]`` loads the model once per option, each
time the way a worker would with that option alone changed from the defaults, and runs
the same batch of ``--batch`` one-image requests (distinct prompts and seeds) through
``ImageGenerator.generate_batch``. The baseline is the defaults: float16 UNet on CUDA
(float32 on the CPU), float32 VAE, eager.

For each option it reports:

1. ``load_seconds``: building the generator, quantization included.
2. ``first_batch_seconds``: the first batch, where compilation happens (what
   ``XSD_WARMUP_SIZES`` moves to the worker's start).
3. ``seconds_per_image`` over ``--repeats`` further batches (``torch.cuda.synchronize``
   around each on CUDA), and ``speedup`` against the baseline's.
4. The images against the baseline's, request by request: the largest per-channel
   difference in 1/255 units and PSNR in dB (the worst request of the batch; null when
   identical).

An option the device cannot run (fp8 without a compute capability 8.9 GPU, int8 without
torchao) is listed with the reason instead of figures. With ``sdxl-random`` the weights are
random, so the differences say how far the arithmetic drifts, not how a trained model's
images change; run it on real weights (``--model-path``) for that.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .pipeline import (
    difference,
    generate,
    machine_info,
    parse_sizes,
    requests_for,
)

if TYPE_CHECKING:
    from PIL import Image

    from pipeline import GenerationRequest, ImageGenerator, ModelSpec

__all__ = ["OPTIONS", "main", "measure", "table"]

# Each option: the Acceleration fields it changes from the defaults.
OPTIONS: dict[str, dict[str, str]] = {
    "int8": {"quantize": "int8"},
    "fp8": {"quantize": "fp8"},
    "vae-bf16": {"vae_dtype": "bfloat16"},
    "vae-fp16": {"vae_dtype": "float16"},
    "dynamic": {"compile": "dynamic"},
    "static": {"compile": "static"},
    "int8-static": {"quantize": "int8", "compile": "static"},
    "fp8-static": {"quantize": "fp8", "compile": "static"},
}
BASELINE = "baseline"


def _load(spec: ModelSpec, device: str | None, changes: dict[str, str]) -> ImageGenerator:
    from pipeline import load_generator
    from pipeline.acceleration import Acceleration

    return load_generator(spec, device=device, acceleration=Acceleration(**changes))


def _time(
    load: Callable[[], ImageGenerator], requests: list[GenerationRequest], repeats: int
) -> tuple[dict[str, Any], list[Image.Image]]:
    """Load, run the batch once (compilation), then ``repeats`` timed times."""
    started = time.perf_counter()
    generator = load()
    loaded = time.perf_counter()
    images = generate(generator, requests)
    first = time.perf_counter() - loaded
    timings = []
    for _ in range(repeats):
        begun = time.perf_counter()
        images = generate(generator, requests)
        timings.append(time.perf_counter() - begun)
    figures = {
        "load_seconds": loaded - started,
        "first_batch_seconds": first,
        "seconds_per_batch": timings,
        "seconds_per_image": sum(timings) / (repeats * len(requests)),
    }
    return figures, images


def measure(
    spec: ModelSpec,
    *,
    device: str | None,
    options: list[str],
    size: tuple[int, int],
    batch: int,
    steps: int,
    guidance: float,
    repeats: int,
) -> dict[str, Any]:
    """The baseline, then every option against it; returns the figures."""
    from pipeline import ModelUnavailable

    generator = _load(spec, device, {})
    requests = requests_for(generator, batch, size, steps=steps, guidance=guidance)
    baseline, reference = _time(lambda: generator, requests, repeats)
    baseline["load_seconds"] = None  # loaded before the clock started
    results: list[dict[str, Any]] = [{"option": BASELINE, "changes": {}, **baseline}]
    for name in options:
        changes = OPTIONS[name]
        try:
            figures, images = _time(lambda c=changes: _load(spec, device, c), requests, repeats)
        except ModelUnavailable as exc:
            results.append({"option": name, "changes": changes, "skipped": str(exc)})
            continue
        diffs = [difference(ours, theirs) for ours, theirs in zip(reference, images, strict=True)]
        psnrs = [d["psnr_db"] for d in diffs if d["psnr_db"] is not None]
        results.append(
            {
                "option": name,
                "changes": changes,
                **figures,
                "speedup": baseline["seconds_per_image"] / figures["seconds_per_image"],
                "max_abs_diff_255": max(d["max_abs_diff_255"] for d in diffs),
                "psnr_db": min(psnrs) if psnrs else None,
            }
        )
    return {
        "machine": machine_info(generator),
        "settings": {
            "model": spec.alias,
            "size": f"{size[0]}x{size[1]}",
            "batch": batch,
            "steps": steps,
            "guidance": guidance,
            "repeats": repeats,
        },
        "results": results,
    }


def table(figures: dict[str, Any]) -> str:
    """The figures as a readable text table."""
    machine, settings = figures["machine"], figures["settings"]
    lines = [
        f"{settings['model']} on {machine['device']} ({machine['device_name']}, "
        f"{machine['dtype']}), torch {machine['torch']}, diffusers {machine['diffusers']}",
        f"{settings['size']}, batch {settings['batch']}, {settings['steps']} steps, guidance "
        f"{settings['guidance']}, repeats {settings['repeats']}",
        "",
        f"{'option':>12} {'load s':>7} {'1st s':>7} {'s/img':>8} {'speedup':>7} "
        f"{'diff/255':>8} {'PSNR dB':>8}",
    ]
    for r in figures["results"]:
        if "skipped" in r:
            lines.append(f"{r['option']:>12}  skipped: {r['skipped']}")
            continue
        load = "-" if r["load_seconds"] is None else f"{r['load_seconds']:.1f}"
        speedup = f"{r['speedup']:.2f}" if "speedup" in r else "-"
        diff = f"{r['max_abs_diff_255']:.0f}" if "max_abs_diff_255" in r else "-"
        psnr = (
            "-" if "psnr_db" not in r else "inf" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}"
        )
        lines.append(
            f"{r['option']:>12} {load:>7} {r['first_batch_seconds']:>7.1f} "
            f"{r['seconds_per_image']:>8.3f} {speedup:>7} {diff:>8} {psnr:>8}"
        )
    return "\n".join(lines)


def _options(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in OPTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown options {unknown}; choose from {', '.join(OPTIONS)}."
        )
    return names


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry; returns the figures."""
    from pipeline import ModelRegistry

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("tiny", "sdxl-random"), default="tiny")
    parser.add_argument(
        "--model-path", type=Path, default=None, help="SDXL weights (as XSD_MODEL_PATH)."
    )
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1, ... (default: CUDA when present)."
    )
    parser.add_argument("--steps", type=int, default=20, help="Denoising steps.")
    parser.add_argument("--guidance", type=float, default=8.0, help="Guidance scale.")
    parser.add_argument("--size", type=parse_sizes, default=[(1024, 1024)], help="WIDTHxHEIGHT.")
    parser.add_argument("--batch", type=int, default=2, help="Requests in the batch.")
    parser.add_argument("--repeats", type=int, default=2, help="Timed batches per option.")
    parser.add_argument(
        "--options",
        type=_options,
        default=["int8", "fp8", "vae-bf16", "static"],
        help=f"Comma-separated, from {', '.join(OPTIONS)}.",
    )
    parser.add_argument("--json", type=Path, default=None, help="Write the figures here.")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch < 1 or args.steps < 1 or len(args.size) != 1:
        parser.error("--repeats, --batch and --steps must be at least 1; --size one size.")
    registry = ModelRegistry.from_config(args.model_path, include_benchmark_models=True)
    spec = registry.get("xSD4.5" if args.model_path else args.model)
    figures = measure(
        spec,
        device=args.device,
        options=args.options,
        size=args.size[0],
        batch=args.batch,
        steps=args.steps,
        guidance=args.guidance,
        repeats=args.repeats,
    )
    print(table(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
