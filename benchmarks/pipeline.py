"""The pipeline benchmark: images per second of the bare generator, per batch size and size.

``python -m benchmarks.pipeline [--model tiny|sdxl-random] [--device cpu|cuda] [--steps 20]
[--guidance 8] [--batch-sizes 1,2,4,8] [--size 1024x1024[,2048x2048,...]] [--warmup 1]
[--repeats 2] [--json PATH]`` loads one model and, for every output size and batch size,
times ``ImageGenerator.generate_batch`` on a batch the way a GPU worker forms one: B distinct
requests of one image each (distinct prompts and seeds). The defaults are MLPerf's SDXL
settings: 20 Euler steps, guidance 8, 1024x1024.

For each configuration it reports:

1. Images per second and seconds per image over ``--repeats`` timed batches, after
   ``--warmup`` untimed ones (``time.perf_counter``; ``torch.cuda.synchronize`` around each
   batch on CUDA). The timed region is the product's: bucket generation, refinement to the
   output size where it needs one, the resize to the exact pixels. PNG encoding is not in
   it (``benchmarks.pool`` adds it).
2. Peak memory. On CUDA, ``torch.cuda.max_memory_allocated`` with the counter reset before
   the configuration. On the CPU there is no per-configuration counter, so it reports the
   process's peak resident set size so far (``ru_maxrss``): cumulative over the run, and
   including the model and the interpreter.
3. Batch invariance, for B > 1: the first request generated alone against the same
   request at position 0 of the batch of B, as the largest per-channel difference in
   1/255 units and as PSNR in dB (null when the images are identical). DESIGN's bar is
   at most 1/255 on the CPU and at least 45 dB on a GPU.
4. With several sizes, each configuration's seconds per image relative to the first
   size's at the same batch size (``relative_to_first_size``): what 2K and 4K output cost
   against 1024x1024.

``tiny`` generates at its own small bucket; the sizes given are read as SDXL sizes (a
1024x1024 request is composed at the bucket and resized, 2048x2048 and 4096x4096 are also
refined), so its relative costs follow the product's arithmetic on small tensors.
``sdxl-random`` is the full SDXL configuration with random weights: SDXL's exact compute.
The anchor for it is MLPerf's per-GPU H100 record for SDXL (offline), 2.04 images/s with
TensorRT FP8.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from pipeline import GenerationRequest, ImageGenerator

__all__ = [
    "MLPERF_H100_IMAGES_PER_SECOND",
    "add_acceleration_arguments",
    "build_generator",
    "difference",
    "generate",
    "machine_info",
    "main",
    "parse_sizes",
    "requests_for",
    "run",
]

# MLPerf Inference SDXL (offline), best per-GPU H100 result: TensorRT, FP8.
MLPERF_H100_IMAGES_PER_SECOND = 2.04
PROMPTS = (
    "Editorial photo of a lighthouse on a cliff at dawn, 35mm, soft light",
    "A red fox in fresh snow, telephoto, shallow depth of field",
    "Watercolor of a harbour town at dusk, boats and lanterns",
    "Product shot of a ceramic teapot on linen, studio lighting",
    "An astronaut cat floating in a space station, cinematic, 85mm",
    "Aerial view of terraced rice fields after rain, morning mist",
    "A steampunk library with brass ladders and green lamps",
    "Portrait of an old fisherman, weathered skin, overcast light",
)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"1024x1024,2048x2048"`` to ``[(1024, 1024), (2048, 2048)]``."""
    sizes = []
    for part in text.split(","):
        width, sep, height = part.strip().lower().partition("x")
        if not sep or not width.isdigit() or not height.isdigit():
            raise argparse.ArgumentTypeError(f"sizes are WIDTHxHEIGHT; got {part!r}.")
        sizes.append((int(width), int(height)))
    return sizes


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes are integers; got {text!r}.") from None
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"batch sizes must be at least 1; got {text!r}.")
    return sizes


def build_generator(args: argparse.Namespace) -> ImageGenerator:
    """The generator the arguments describe, with the worker's device options."""
    from pipeline import ModelRegistry, load_generator
    from pipeline.acceleration import Acceleration

    spec = ModelRegistry.from_config(None, include_benchmark_models=True).get(args.model)
    options = Acceleration(
        dtype=args.dtype,
        attention=args.attention,
        compile=args.compile,
        channels_last=args.channels_last,
        quantize=args.quantize,
        vae_dtype=args.vae_dtype,
    )
    return load_generator(spec, device=args.device, acceleration=options)


def requests_for(
    generator: ImageGenerator, count: int, size: tuple[int, int], *, steps: int, guidance: float
) -> list[GenerationRequest]:
    """``count`` distinct one-image requests; the first is the same at every batch size."""
    from pipeline import GenerationRequest

    return [
        GenerationRequest(
            request_id=f"req_bench{index}",
            model=generator.spec.alias,
            prompt=f"{PROMPTS[index % len(PROMPTS)]}, variation {index}",
            width=size[0],
            height=size[1],
            seeds=(1000 + index,),
            guidance_scale=guidance,
            steps=steps,
        )
        for index in range(count)
    ]


def generate(generator: ImageGenerator, requests: list[GenerationRequest]) -> list[Image.Image]:
    """One batch, synchronised; the first image of every request."""
    import torch

    cuda = generator.pipeline.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    outcomes = generator.generate_batch(requests)
    if cuda:
        torch.cuda.synchronize()
    images = []
    for request, outcome in zip(requests, outcomes, strict=True):
        if not isinstance(outcome, list):
            raise RuntimeError(f"{request.request_id} failed: {outcome}")
        images.append(outcome[0])
    return images


def difference(alone: Image.Image, batched: Image.Image) -> dict[str, float | None]:
    """Largest per-channel difference (1/255 units) and PSNR (dB; None if identical)."""
    a = np.asarray(alone.convert("RGB"), dtype=np.float64)
    b = np.asarray(batched.convert("RGB"), dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    return {
        "max_abs_diff_255": float(np.abs(a - b).max()),
        "psnr_db": None if mse == 0 else 10 * math.log10(255**2 / mse),
    }


def _peak_memory(cuda: bool) -> dict[str, Any]:
    import torch

    if cuda:
        return {"kind": "cuda_max_memory_allocated", "bytes": torch.cuda.max_memory_allocated()}
    # Linux reports ru_maxrss in KiB, macOS in bytes.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "kind": "process_peak_rss",
        "bytes": rss if sys.platform == "darwin" else rss * 1024,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(generator: ImageGenerator) -> dict[str, Any]:
    """What the figures were measured on: device, versions, the generator's options."""
    import diffusers
    import torch

    device = generator.pipeline.device
    cuda = device.type == "cuda"
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "dtype": str(generator.pipeline.dtype).removeprefix("torch."),
        "acceleration": dataclasses.asdict(generator.pipeline.acceleration),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def run(
    generator: ImageGenerator,
    *,
    sizes: list[tuple[int, int]],
    batch_sizes: list[int],
    steps: int,
    guidance: float,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    """Every (size, batch size) configuration on ``generator``; returns the figures."""
    import torch

    cuda = generator.pipeline.device.type == "cuda"
    results: list[dict[str, Any]] = []
    for size in sizes:
        requests = requests_for(generator, max(batch_sizes), size, steps=steps, guidance=guidance)
        alone: Image.Image | None = None
        for batch in batch_sizes:
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            for _ in range(warmup):
                generate(generator, requests[:batch])
            timings = []
            for _ in range(repeats):
                started = time.perf_counter()
                images = generate(generator, requests[:batch])
                timings.append(time.perf_counter() - started)
            memory = _peak_memory(cuda)
            if batch == 1:
                alone = images[0]
            invariance = None
            if batch > 1:
                if alone is None:
                    (alone,) = generate(generator, requests[:1])
                invariance = difference(alone, images[0])
            seconds_per_image = sum(timings) / (repeats * batch)
            results.append(
                {
                    "size": f"{size[0]}x{size[1]}",
                    "batch_size": batch,
                    "seconds_per_batch": timings,
                    "images_per_second": 1 / seconds_per_image,
                    "seconds_per_image": seconds_per_image,
                    "peak_memory": memory,
                    "invariance": invariance,
                }
            )
    first = {
        r["batch_size"]: r["seconds_per_image"] for r in results if r["size"] == results[0]["size"]
    }
    for result in results:
        result["relative_to_first_size"] = result["seconds_per_image"] / first[result["batch_size"]]
    figures: dict[str, Any] = {
        "machine": machine_info(generator),
        "settings": {
            "model": generator.spec.alias,
            "steps": steps,
            "guidance": guidance,
            "sizes": [f"{w}x{h}" for w, h in sizes],
            "batch_sizes": batch_sizes,
            "warmup": warmup,
            "repeats": repeats,
        },
        "results": results,
    }
    if generator.spec.kind == "sdxl-random":
        best = max(r["images_per_second"] for r in results if r["size"] == results[0]["size"])
        figures["mlperf_anchor"] = {
            "images_per_second": MLPERF_H100_IMAGES_PER_SECOND,
            "what": "MLPerf Inference SDXL offline, per H100, TensorRT FP8",
            "best_images_per_second": best,
            "ratio": best / MLPERF_H100_IMAGES_PER_SECOND,
        }
    return figures


def table(figures: dict[str, Any]) -> str:
    """The figures as a readable text table."""
    machine, settings = figures["machine"], figures["settings"]
    memory_kind = figures["results"][0]["peak_memory"]["kind"]
    lines = [
        f"{settings['model']} on {machine['device']} ({machine['device_name']}, "
        f"{machine['dtype']}), torch {machine['torch']}, diffusers {machine['diffusers']}",
        f"{settings['steps']} steps, guidance {settings['guidance']}, warmup "
        f"{settings['warmup']}, repeats {settings['repeats']}; memory: {memory_kind}",
        "",
        f"{'size':>10} {'batch':>5} {'img/s':>8} {'s/img':>8} {'peak MiB':>9} "
        f"{'diff/255':>8} {'PSNR dB':>8} {'vs 1st':>7}",
    ]
    for r in figures["results"]:
        inv = r["invariance"]
        diff = "-" if inv is None else f"{inv['max_abs_diff_255']:.0f}"
        psnr = (
            "-" if inv is None else ("inf" if inv["psnr_db"] is None else f"{inv['psnr_db']:.1f}")
        )
        lines.append(
            f"{r['size']:>10} {r['batch_size']:>5} {r['images_per_second']:>8.3f} "
            f"{r['seconds_per_image']:>8.3f} {r['peak_memory']['bytes'] / 2**20:>9.0f} "
            f"{diff:>8} {psnr:>8} {r['relative_to_first_size']:>7.2f}"
        )
    anchor = figures.get("mlperf_anchor")
    if anchor:
        lines += [
            "",
            f"best {anchor['best_images_per_second']:.3f} images/s = {anchor['ratio']:.2f}x "
            f"MLPerf's {anchor['images_per_second']} ({anchor['what']})",
        ]
    return "\n".join(lines)


def add_acceleration_arguments(parser: argparse.ArgumentParser) -> None:
    """The worker's device options (``XSD_DTYPE`` and the others) as arguments."""
    parser.add_argument(
        "--dtype",
        choices=("auto", "float16", "bfloat16", "float32"),
        default="auto",
        help="As XSD_DTYPE (auto: float16 on CUDA, else float32).",
    )
    parser.add_argument(
        "--attention", choices=("sdpa", "xformers"), default="sdpa", help="As XSD_ATTENTION."
    )
    parser.add_argument(
        "--compile",
        nargs="?",
        choices=("off", "dynamic", "static"),
        default="off",
        const="dynamic",
        help="torch.compile the UNet, as XSD_COMPILE (alone: dynamic).",
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels_last UNet on CUDA (as XSD_CHANNELS_LAST).",
    )
    parser.add_argument(
        "--quantize",
        choices=("none", "int8", "fp8"),
        default="none",
        help="The UNet's linear layers in 8 bits, as XSD_QUANTIZE.",
    )
    parser.add_argument(
        "--vae-dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="As XSD_VAE_DTYPE.",
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry; returns the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("tiny", "sdxl-random"), default="tiny")
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1, ... (default: CUDA when present)."
    )
    parser.add_argument("--steps", type=int, default=20, help="Denoising steps.")
    parser.add_argument("--guidance", type=float, default=8.0, help="Guidance scale.")
    parser.add_argument(
        "--batch-sizes", type=_batch_sizes, default=[1, 2, 4, 8], help="Comma-separated."
    )
    parser.add_argument(
        "--size",
        type=parse_sizes,
        default=[(1024, 1024)],
        help="Output WIDTHxHEIGHT, comma-separated; later sizes are compared with the first.",
    )
    add_acceleration_arguments(parser)
    parser.add_argument("--warmup", type=int, default=1, help="Untimed batches per config.")
    parser.add_argument("--repeats", type=int, default=2, help="Timed batches per config.")
    parser.add_argument("--json", type=Path, default=None, help="Write the figures here.")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.steps < 1:
        parser.error("--repeats and --steps must be at least 1, --warmup at least 0.")
    generator = build_generator(args)
    figures = run(
        generator,
        sizes=args.size,
        batch_sizes=args.batch_sizes,
        steps=args.steps,
        guidance=args.guidance,
        warmup=args.warmup,
        repeats=args.repeats,
    )
    print(table(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
