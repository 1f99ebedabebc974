"""``python -m benchmarks.fastpath`` on the tiny model and the CPU: every option against
the float32 baseline, fp8 listed as refused with its reason."""

from __future__ import annotations

import json

import pytest

from benchmarks.fastpath import main


def test_each_option_is_measured_against_the_baseline(tmp_path) -> None:
    out = tmp_path / "fastpath.json"
    figures = main(
        [
            *("--model", "tiny", "--device", "cpu", "--steps", "1", "--batch", "2"),
            *("--size", "512x512", "--repeats", "1", "--options", "int8,fp8,vae-bf16"),
            *("--json", str(out)),
        ]
    )
    assert json.loads(out.read_text()) == figures
    baseline, int8, fp8, vae = figures["results"]
    assert baseline["option"] == "baseline" and "psnr_db" not in baseline
    assert (int8["changes"], vae["changes"]) == ({"quantize": "int8"}, {"vae_dtype": "bfloat16"})
    for option in (int8, vae):
        assert option["psnr_db"] is None or option["psnr_db"] >= 30
        assert option["seconds_per_image"] > 0 and len(option["seconds_per_batch"]) == 1
    assert fp8["option"] == "fp8" and "compute capability" in fp8["skipped"]
    assert figures["settings"]["batch"] == 2 and figures["machine"]["device"] == "cpu"


def test_unknown_options_are_refused() -> None:
    with pytest.raises(SystemExit):
        main(["--options", "int4"])
