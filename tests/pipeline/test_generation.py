"""The tiny SDXL-architecture model end to end on the CPU."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipeline import ImageGenerator, InvalidInput, encode_png
from pipeline.refine import STRENGTH
from pipeline.sdxl import Sample
from pipeline.text import WINDOW

from .conftest import request


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_same_request_same_bytes(tiny: ImageGenerator) -> None:
    first = tiny.generate(request())
    second = tiny.generate(request())
    assert encode_png(first[0], text={}) == encode_png(second[0], text={})


def test_seed_and_prompt_change_the_image(tiny: ImageGenerator) -> None:
    base = pixels(tiny.generate(request())[0])
    assert np.abs(base - pixels(tiny.generate(request(seeds=(8,)))[0])).mean() > 1
    assert np.abs(base - pixels(tiny.generate(request(prompt="a red fox"))[0])).mean() > 0.1


def test_image_in_a_batch_equals_alone(tiny: ImageGenerator) -> None:
    batch = tiny.generate(request(seeds=(7, 8, 9)))
    alone = tiny.generate(request(seeds=(8,)))
    assert np.abs(pixels(batch[1]) - pixels(alone[0])).max() <= 1
    assert np.abs(pixels(batch[0]) - pixels(batch[1])).mean() > 1


def test_mixed_batch_is_invariant(tiny: ImageGenerator) -> None:
    """Different prompts (one longer than 77 tokens), seeds and guidance in one batch."""
    long_prompt = "a lighthouse " + "with many windows " * 40
    samples = [
        Sample("a lighthouse at dawn", 3, 7.5),
        Sample(long_prompt, 4, 3.0),
        Sample("a red fox", 5, 12.0),
    ]
    together = tiny.pipeline(samples, width=64, height=64, steps=4)
    for sample, image in zip(samples, together, strict=True):
        (single,) = tiny.pipeline([sample], width=64, height=64, steps=4)
        assert np.abs(pixels(image) - pixels(single)).max() <= 1


def test_long_prompts_are_not_truncated(tiny: ImageGenerator) -> None:
    words = "a lighthouse on a cliff " * 20  # about 100 tokens
    assert len(words.split()) > WINDOW
    first = tiny.generate(request(prompt=words + "at dawn"))
    second = tiny.generate(request(prompt=words + "at midnight"))
    assert np.abs(pixels(first[0]) - pixels(second[0])).mean() > 0


@pytest.mark.parametrize(
    "size", [(2048, 2048), (2560, 1440), (1440, 2560), (1664, 2496), (8192, 512)]
)
def test_exact_output_sizes(tiny: ImageGenerator, size: tuple[int, int]) -> None:
    (image,) = tiny.generate(request(width=size[0], height=size[1]))
    assert image.size == size and image.mode == "RGB"


def test_watermark_marks_only_the_corner(tiny: ImageGenerator) -> None:
    plain = pixels(tiny.generate(request())[0])
    marked = pixels(tiny.generate(request(watermark=True))[0])
    diff = np.abs(plain - marked).sum(axis=2)
    ys, xs = np.nonzero(diff)
    assert len(xs) > 100
    assert xs.min() > 2048 * 0.85 and ys.min() > 2048 * 0.9


def test_png_carries_provenance(tiny: ImageGenerator) -> None:
    (image,) = tiny.generate(request())
    data = encode_png(image, text={"xsd:requestId": "req_1", "xsd:model": "xSD4.5"})
    read = Image.open(io.BytesIO(data))
    assert read.text == {"xsd:requestId": "req_1", "xsd:model": "xSD4.5"}


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"width": 0}, "positive"),
        ({"seeds": ()}, "at least one"),
        ({"guidance_scale": 0.5}, "guidance_scale"),
        ({"prompt": "  "}, "prompt"),
    ],
)
def test_inputs_are_checked_first(tiny: ImageGenerator, changes: dict, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        tiny.generate(request(**changes))


def test_weights_are_identical_across_processes(tiny: ImageGenerator) -> None:
    code = (
        "from pipeline import ModelRegistry, load_generator;"
        "g = load_generator(ModelRegistry.from_config(None).get('xSD4.5'), device='cpu');"
        "print(float(sum(p.double().sum() for p in g.pipeline.components.unet.parameters())))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    here = float(sum(p.double().sum() for p in tiny.pipeline.components.unet.parameters()))
    assert float(out.stdout.strip()) == here


def test_step_callback(tiny: ImageGenerator) -> None:
    steps: list[int] = []
    tiny.generate(request(steps=10), on_step=lambda index, seconds: steps.append(index))
    # The ten steps at the bucket, then the refinement's share of a ten-step schedule.
    assert steps == list(range(10)) + list(range(round(10 * STRENGTH)))


def test_progress_counts_every_image_through_its_refinement(tiny: ImageGenerator) -> None:
    reports: dict[str, list[tuple[int, int]]] = {}
    requests = [
        # 2K, two images: refined whole, in chunks that run one after another.
        request(request_id="req_2k", seeds=(1, 2), steps=4),
        # 4K: refined in tiles, every tile within each step.
        request(request_id="req_4k", width=4096, height=4096, steps=4),
        # At its bucket: no refinement.
        request(request_id="req_1k", width=64, height=64, steps=4),
    ]
    tiny.generate_batch(
        requests,
        on_progress=lambda request_id, done, total: reports.setdefault(request_id, []).append(
            (done, total)
        ),
    )
    refined = 4 + round(4 * STRENGTH)
    assert [tiny.schedule(r) for r in requests] == [refined, refined, 4]
    for request_id, total in (("req_2k", refined), ("req_4k", refined), ("req_1k", 4)):
        done = [d for d, t in reports[request_id] if t == total]
        assert len(done) == len(reports[request_id]), "one schedule per request"
        assert done == sorted(done) and done[-1] == total, (request_id, done)
    # Two images: each step counts half of one step of the request's schedule.
    assert len(reports["req_2k"]) == 4 + 2 * round(4 * STRENGTH)
