"""The references benchmark: peak memory of the prepare stage on hostile reference images.

``python -m benchmarks.references [--cases png-7000,...] [--side 7000] [--jobs 8]
[--refs 4] [--rss-cap-mib 8192] [--json PATH]`` crafts small files that decode to huge
canvases, serves them over HTTP on loopback and, for each case, in a fresh subprocess,
runs the prepare stage's reference path as the CPU worker does: ``--jobs`` prepare tasks
at once in a thread pool (the worker's ``--concurrency`` 8), each fetching and decoding
its ``--refs`` references with ``scheduler.stages.prepare._fetch_all`` (4 fetch threads a job).
Storing the reduced references is left out: it needs Redis and costs little.

For each case it reports the subprocess's peak resident set size and its baseline after
imports, the wall time of the decoding, and how many jobs got their references and how
many were refused (with the first message). The peak is ``VmHWM`` from
``/proc/self/status``, the high-water mark of the subprocess's own memory. Its
``ru_maxrss`` is the same figure only when the parent is smaller: Linux carries a
process's peak over into the ``ru_maxrss`` of the programs it starts, so under pytest with
torch loaded every case read 1034 MiB. A child whose RSS passes ``--rss-cap-mib`` is killed
(the old code can want ~19 GB); its peak is then reported as at least the cap.

Cases (at ``--side`` 7000):

- ``png-7000``: a 7000x7000 RGB PNG of ~190 KB (the issue's image).
- ``png-7000-truncated``: the same, cut short inside its pixel data: the whole raster is
  allocated before the decoder finds out, and the job is refused.
- ``jpeg-7000``: a 7000x7000 baseline JPEG (4:2:0), which libjpeg can scale on load.
- ``jpeg-7000-progressive``: the same, progressive: libjpeg keeps every DCT coefficient
  of a progressive file at full size, whatever the scale it decodes at.
- ``webp-3800``: a 3800x3800 lossless WebP: libwebp decodes the whole canvas (twice) and
  Pillow copies the frame out, about four rasters at once (near the largest WebP the
  default decode budget admits).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

__all__ = ["main", "run", "CASES"]

MIB = 1024 * 1024


def _canvas(side: int) -> Image.Image:
    """A flat canvas with two diagonals: compresses to ~190 KB as a 7000x7000 PNG."""
    image = Image.new("RGB", (side, side), (90, 120, 200))
    draw = ImageDraw.Draw(image)
    draw.line([(0, 0), (side, side)], fill=(200, 40, 40), width=9)
    draw.line([(side, 0), (0, side)], fill=(40, 200, 40), width=9)
    return image


def _encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


# name -> (side as a fraction of --side, how to encode the canvas)
CASES: dict[str, tuple[float, Callable[[Image.Image], bytes]]] = {
    "png-7000": (1.0, lambda im: _encoded(im, "PNG", optimize=True)),
    "png-7000-truncated": (1.0, lambda im: _encoded(im, "PNG", optimize=True)[:-2000]),
    "jpeg-7000": (1.0, lambda im: _encoded(im, "JPEG", quality=85)),
    "jpeg-7000-progressive": (1.0, lambda im: _encoded(im, "JPEG", quality=85, progressive=True)),
    "webp-3800": (38 / 70, lambda im: _encoded(im, "WEBP", lossless=True)),
}


def _serve(files: dict[str, bytes]) -> ThreadingHTTPServer:
    """Serve ``files`` by first path segment (any query string) on a loopback port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = files.get(self.path.split("?")[0].strip("/"))
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _high_water_mib() -> int:
    """This process's peak RSS so far (Linux)."""
    status = Path("/proc/self/status").read_text()
    return round(int(status.split("VmHWM:")[1].split()[0]) / 1024)


def _tune_allocator() -> bool:
    """What the CPU worker does at start (``scheduler.process.worker.run_worker``); code from before
    issue 8 has no such step."""
    try:
        from scheduler.process.allocator import return_large_frees
    except ImportError:
        return False
    return return_large_frees()


def _child(url: str, jobs: int, refs: int, *, plain_allocator: bool) -> dict[str, Any]:
    """In the subprocess: the CPU worker's prepare path, ``jobs`` tasks at once."""
    logging.disable(logging.WARNING)  # XSD_ALLOW_PRIVATE_URLS's warning, once per task
    allocator_tuned = False if plain_allocator else _tune_allocator()
    from scheduler.jobs.records import JobRecord
    from scheduler.jobs.sizes import AspectRatio
    from scheduler.jobs.states import JobStatus
    from scheduler.runtime import Runtime
    from scheduler.settings import Settings
    from scheduler.stages.prepare import _fetch_all

    settings = Settings(
        data_dir=Path(tempfile.gettempdir()) / "xsd-refbench",  # nothing is written there
        redis_url="redis://127.0.0.1:9/0",  # never contacted: fetching needs no Redis
        allow_private_urls=True,
        api_key_pepper="bench",
        url_signing_key="bench",
    )
    runtime = Runtime(settings=settings, redis_url=settings.redis_url or "")

    def prepare_one(index: int) -> str | None:
        record = JobRecord(
            id=f"req_bench{index:012d}",
            account="bench",
            status=JobStatus.QUEUED,
            model="xSD4.5",
            prompt="a lighthouse",
            email="bench@your-product.com",
            created_ms=0,
            references=tuple(f"{url}?job={index}&ref={i}" for i in range(refs)),
            size="2K",
            aspect_ratio=AspectRatio.SQUARE,
            n=1,
            image_count=1,
            seed=index,
            guidance_scale=7.5,
            watermark=False,
            response_format="url",
            sequential=False,
            width=2048,
            height=2048,
            charged=10,
        )
        try:
            _fetch_all(runtime, record)
        except Exception as exc:  # _ReferenceError: the job would fail, refunded
            return f"{type(exc).__name__}: {exc}"
        return None

    baseline = _high_water_mib()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        outcomes = list(pool.map(prepare_one, range(jobs)))
    errors = [error for error in outcomes if error]
    return {
        "seconds": round(time.perf_counter() - started, 2),
        "peak_rss_mib": _high_water_mib(),
        "baseline_rss_mib": baseline,
        "allocator_tuned": allocator_tuned,
        "jobs_prepared": len(outcomes) - len(errors),
        "jobs_refused": len(errors),
        "first_error": errors[0][:300] if errors else None,
    }


def _run_case(
    url: str, *, jobs: int, refs: int, cap_mib: int, plain_allocator: bool
) -> dict[str, Any]:
    """One case in a fresh interpreter, killed if its RSS passes the cap."""
    command = [sys.executable, "-m", "benchmarks.references", "--child", url]
    command += ["--jobs", str(jobs), "--refs", str(refs)]
    command += ["--plain-allocator"] if plain_allocator else []
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    killed = threading.Event()

    def watch() -> None:
        status = Path(f"/proc/{child.pid}/status")
        while child.returncode is None:
            try:
                rss_kib = int(status.read_text().split("VmRSS:")[1].split()[0])
            except (OSError, IndexError):
                return  # exited (or not Linux)
            if rss_kib > cap_mib * 1024:
                killed.set()
                child.send_signal(signal.SIGKILL)
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    output, _ = child.communicate()
    watcher.join()
    if killed.is_set():
        return {"peak_rss_mib": cap_mib, "killed_at_cap": True}
    if child.returncode != 0:
        return {"exit_code": child.returncode}
    return json.loads(output)


def _code_version() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (modified)" if dirty.stdout.strip() else "")


def run(
    cases: list[str], *, side: int, jobs: int, refs: int, cap_mib: int, plain_allocator: bool
) -> dict[str, Any]:
    """Craft, serve and measure every case; the figures as a JSON-ready dict."""
    files: dict[str, bytes] = {}
    sizes: dict[str, str] = {}
    for name in cases:
        scale, encode = CASES[name]
        canvas = _canvas(max(1, round(side * scale)))
        files[name] = encode(canvas)
        sizes[name] = f"{canvas.width}x{canvas.height}"
    server = _serve(files)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    results = []
    try:
        for name in cases:
            figures = _run_case(
                f"{base}/{name}",
                jobs=jobs,
                refs=refs,
                cap_mib=cap_mib,
                plain_allocator=plain_allocator,
            )
            results.append(
                {"case": name, "size": sizes[name], "file_bytes": len(files[name])} | figures
            )
    finally:
        server.shutdown()
        server.server_close()
    return {
        "machine": {
            "date": datetime.now().astimezone().isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "pillow": Image.__version__,
            "cpu_count": os.cpu_count(),
            "code": _code_version(),
        },
        "settings": {
            "jobs": jobs,
            "refs": refs,
            "side": side,
            "rss_cap_mib": cap_mib,
            "plain_allocator": plain_allocator,
        },
        "cases": results,
    }


def table(figures: dict[str, Any]) -> str:
    """The cases as a Markdown table."""
    rows = [
        "| case | file | peak RSS | baseline RSS | seconds | jobs prepared / refused |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for case in figures["cases"]:
        peak = f"{case['peak_rss_mib']} MiB"
        if case.get("killed_at_cap"):
            peak = f">= {peak} (killed at the cap)"
        rows.append(
            f"| {case['case']} ({case['size']}) | {case['file_bytes'] / 1024:.0f} KiB | {peak} "
            f"| {case.get('baseline_rss_mib', '')} MiB | {case.get('seconds', '')} "
            f"| {case.get('jobs_prepared', '')} / {case.get('jobs_refused', '')} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; returns the figures it printed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="Comma-separated case names.")
    parser.add_argument("--side", type=int, default=7000, help="Canvas side of the big cases.")
    parser.add_argument("--jobs", type=int, default=8, help="Prepare tasks at once.")
    parser.add_argument("--refs", type=int, default=4, help="References per job.")
    parser.add_argument("--rss-cap-mib", type=int, default=8192, help="Kill a case past this RSS.")
    parser.add_argument(
        "--plain-allocator",
        action="store_true",
        help="Skip the CPU worker's allocator setting (scheduler.process.allocator).",
    )
    parser.add_argument("--json", type=Path, default=None, help="Write the figures here.")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        figures = _child(args.child, args.jobs, args.refs, plain_allocator=args.plain_allocator)
        print(json.dumps(figures))
        return figures
    cases = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown or args.jobs < 1 or args.refs < 1 or args.side < 1:
        parser.error(f"Unknown cases {unknown} or a count below 1.")
    figures = run(
        cases,
        side=args.side,
        jobs=args.jobs,
        refs=args.refs,
        cap_mib=args.rss_cap_mib,
        plain_allocator=args.plain_allocator,
    )
    print(table(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
