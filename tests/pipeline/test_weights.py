"""A weights directory: ``tiny`` saved as diffusers lays SDXL out, with its own tokenizer
folders, loads as what its registry entry names (scheduler, precision, tokenizers)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import ImageGenerator, load_generator
from pipeline.components import build_components
from pipeline.prompts import BOS_ID, EOS_ID, clip_tokenizer
from pipeline.registry import CLIP_TOKENIZER, WEIGHTS_TOKENIZER, ModelSpec

from .conftest import clip_tokenizers, request

MODELS = ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler")
# Longer than one 77-token window, with case, spacing and accents to normalise.
PROMPT = "A  Lighthouse at DAWN, café crème, " * 12


@pytest.fixture(scope="module")
def saved_tiny(tiny: ImageGenerator, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny's models as a diffusers SDXL directory, without tokenizer folders."""
    folder = tmp_path_factory.mktemp("tiny_models")
    components = build_components(tiny.spec, dtype=torch.float32)
    for name in MODELS:
        getattr(components, name).save_pretrained(folder / name)
    (folder / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionXLPipeline"})
    )
    return folder


def weights_dir(saved_tiny: Path, target: Path, *, pad_2: str | None = "!") -> Path:
    """A weights directory on ``saved_tiny``'s models with ``tokenizer/`` (CLIP's BPE) and,
    unless ``pad_2`` is None, ``tokenizer_2/`` padding with ``pad_2``."""
    target.mkdir()
    for name in (*MODELS, "model_index.json"):
        (target / name).symlink_to(saved_tiny / name)
    first, second = clip_tokenizers()
    first.save_pretrained(target / "tokenizer")
    if pad_2 is not None:
        second.pad_token = pad_2
        second.save_pretrained(target / "tokenizer_2")
    return target


def spec_of(tiny: ImageGenerator, folder: Path) -> ModelSpec:
    """tiny's registry entry (its sizes and steps) on the weights directory ``folder``."""
    return replace(tiny.spec, source=folder, tokenizer=WEIGHTS_TOKENIZER)


def test_directory_tokenizers_are_used(
    tiny: ImageGenerator, saved_tiny: Path, tmp_path: Path
) -> None:
    # SDXL's own second tokenizer pads with "!"; this directory's pads with the end token.
    folder = weights_dir(saved_tiny, tmp_path / "sdxl", pad_2="<|endoftext|>")
    components = build_components(spec_of(tiny, folder), dtype=torch.float32)
    first, second = components.tokenizer, components.tokenizer_2
    assert (first.bos_id, first.eos_id, first.pad_id) == (BOS_ID, EOS_ID, EOS_ID)
    assert (second.bos_id, second.eos_id, second.pad_id) == (BOS_ID, EOS_ID, EOS_ID)
    assert first.encode(PROMPT) == second.encode(PROMPT) == clip_tokenizer().encode(PROMPT).ids


def test_missing_tokenizer_folders_fall_back_to_clip(
    tiny: ImageGenerator, saved_tiny: Path, tmp_path: Path
) -> None:
    folder = weights_dir(saved_tiny, tmp_path / "sdxl", pad_2=None)
    spec = spec_of(tiny, folder)
    components = build_components(spec, dtype=torch.float32)
    assert (components.tokenizer.pad_id, components.tokenizer_2.pad_id) == (EOS_ID, 0)
    assert components.tokenizer_2.encode(PROMPT) == clip_tokenizer().encode(PROMPT).ids
    # A registry entry that names CLIP's tokenizer ignores the directory's.
    (folder / "tokenizer_2").mkdir()  # not a tokenizer: reading it would fail
    clip = build_components(replace(spec, tokenizer=CLIP_TOKENIZER), dtype=torch.float32)
    assert clip.tokenizer_2.pad_id == 0


def test_saved_tiny_generates_tiny_images(
    tiny: ImageGenerator, saved_tiny: Path, tmp_path: Path
) -> None:
    """The whole load path of real weights, SDXL's tokenizers read from their folders,
    gives the images of the model it was saved from."""
    folder = weights_dir(saved_tiny, tmp_path / "sdxl")
    loaded = load_generator(spec_of(tiny, folder), device="cpu")
    job = request(prompt=PROMPT, width=64, height=64)
    (theirs,) = loaded.generate(job)
    (ours,) = tiny.generate(job)
    assert np.array_equal(np.asarray(theirs), np.asarray(ours))
