"""``xsd generate``: submit, follow the generation's events with a progress bar, save
the images."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..client import XsdClient
from ..exceptions import JobFailed
from .progress import ProgressDisplay

__all__ = ["run_generation", "save_images"]


def save_images(
    client: XsdClient,
    record: dict[str, Any],
    out_dir: Path,
    *,
    on_saved: Callable[[int, int, Path], None] | None = None,
) -> list[Path]:
    """Download every image of a succeeded record; returns the paths written.
    ``on_saved`` hears each one (its index, how many images, its path)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images = record.get("images", [])
    paths = []
    for index, image in enumerate(images):
        if "error" in image:
            click.echo(f"image {index} was lost: {image['error']['code']}", err=True)
            continue
        path = client.download(image, out_dir / f"{record['requestId']}_{index}.png")
        paths.append(path)
        if on_saved:
            on_saved(index, len(images), path)
    return paths


def run_generation(
    client: XsdClient,
    *,
    prompt: str,
    email: str,
    out_dir: Path,
    model: str,
    size: str,
    aspect_ratio: str,
    n: int | None,
    seed: int | None,
    guidance_scale: float | None,
    references: tuple[str, ...],
    watermark: bool,
    max_images: int | None,
    interval: float = 1.0,
) -> list[Path]:
    """Submit one generation, follow it (a progress bar on a terminal, plain lines
    elsewhere; polling every ``interval`` seconds where the server has no event stream),
    save what it produced."""
    body: dict[str, Any] = {
        "endUserEmail": email,
        "prompt": prompt,
        "model": model,
        "size": size,
        "aspectRatio": aspect_ratio,
        "n": n,
        "seed": seed,
        "guidanceScale": guidance_scale,
        "watermark": watermark or None,
        "references": list(references) or None,
    }
    if max_images is not None:
        body["sequential"] = "auto"
        body["sequentialOptions"] = {"maxImages": max_images}
    display = ProgressDisplay(interactive=sys.stderr.isatty())
    record = client.create_generation(**body)
    display.update(record)
    for event in client.stream(record["requestId"], poll_interval=interval):
        record = event.data
        display.update(record)
    display.finish()
    if record["status"] != "succeeded":
        error = record.get("error") or {"code": record["status"], "message": "No images."}
        raise JobFailed(error["code"], error["message"], record=record)
    return save_images(client, record, out_dir, on_saved=display.saved)
