"""``xsd generate``: submit, show progress while polling, save the images."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from ..client import XsdClient
from ..exceptions import JobFailed

__all__ = ["run_generation", "save_images"]


def _status_line(record: dict[str, Any], started: float) -> str:
    elapsed = time.monotonic() - started
    return f"{record['requestId']}  {record['status']:<10}  {elapsed:6.1f} s"


def save_images(client: XsdClient, record: dict[str, Any], out_dir: Path) -> list[Path]:
    """Download every image of a succeeded record; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(record.get("images", [])):
        if "error" in image:
            click.echo(f"image {index} was lost: {image['error']['code']}", err=True)
            continue
        paths.append(client.download(image, out_dir / f"{record['requestId']}_{index}.png"))
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
    """Submit one generation, poll it with a live status line, save what it produced."""
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
    started = time.monotonic()
    job = client.create_generation(**body)
    interactive = sys.stderr.isatty()

    def show(record: dict[str, Any]) -> None:
        line = _status_line(record, started)
        click.echo(f"\r{line}" if interactive else line, err=True, nl=not interactive)

    record = client.wait(job["requestId"], interval=interval, on_update=show)
    if interactive:
        click.echo("", err=True)
    if record["status"] != "succeeded":
        error = record.get("error") or {"code": record["status"], "message": "No images."}
        raise JobFailed(error["code"], error["message"], record=record)
    return save_images(client, record, out_dir)
