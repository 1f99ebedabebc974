"""The FLOP count of the full SDXL configuration on meta tensors (no weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.flops import SdxlOnMeta, image_flops, main
from pipeline.geometry import Size
from pipeline.refine import STRENGTH, tile_grid


@pytest.fixture(scope="module")
def model() -> SdxlOnMeta:
    return SdxlOnMeta()


def test_one_unet_evaluation_costs_what_sdxl_is_known_to_cost(model: SdxlOnMeta) -> None:
    # SDXL's UNet is ~6.7 TFLOP per 1024x1024 row; guidance evaluates two rows.
    assert 12.5e12 < model.unet(Size(width=1024, height=1024)) < 14.5e12


def test_the_parts_follow_the_pipeline(model: SdxlOnMeta) -> None:
    steps = 4
    refine_steps = max(1, round(steps * STRENGTH))
    square = Size(width=1024, height=1024)
    one_k = image_flops(model, square, steps=steps)
    assert one_k.unet == steps * model.unet(square)
    assert one_k.refine_unet == one_k.refine_vae == 0

    two_k = image_flops(model, Size(width=2048, height=2048), steps=steps)
    assert two_k.refine_unet_evaluations == refine_steps  # whole latents
    # Attention grows faster than the pixels: four times the area costs more than 4x.
    assert two_k.refine_unet > 4 * refine_steps * model.unet(square)

    four_k = image_flops(model, Size(width=4096, height=4096), steps=steps)
    tiles = tile_grid(512, 512, tile=128, overlap=32)
    assert four_k.refine_unet_evaluations == refine_steps * len(tiles)
    assert four_k.refine_unet == refine_steps * len(tiles) * model.unet(square)
    assert four_k.total == sum(
        (four_k.text, four_k.unet, four_k.vae, four_k.refine_unet, four_k.refine_vae)
    )
    assert four_k.images_per_second(790) == pytest.approx(790e12 / four_k.total)


def test_the_command_prints_the_bounds_next_to_mlperf(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "flops.json"
    main(["--steps", "2", "--sizes", "1024x1024", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "MLPerf H200 (v5.0): 2.37 img/s" in printed
    (row,) = json.loads(out.read_text())["figures"]
    assert row["bound_fp8"] == pytest.approx(2 * row["bound_bf16"])
    assert row["unet_evaluations"] == 2
