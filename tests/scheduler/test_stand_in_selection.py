"""The GPU worker serves the benchmark stand-in only when its setting asks for it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import pipeline
from pipeline import ModelRegistry
from pipeline.stand_in import StandInGenerator
from scheduler.settings import Settings
from scheduler.stages import running


@pytest.fixture(autouse=True)
def _no_loaded_generators(monkeypatch):
    monkeypatch.setattr(running, "_generators", {})


def _runtime(tmp_path, **settings):
    return SimpleNamespace(
        registry=ModelRegistry.from_config(None),
        settings=Settings(data_dir=tmp_path, **settings),
    )


def test_the_real_model_by_default(tmp_path, monkeypatch):
    loaded = object()
    monkeypatch.setattr(pipeline, "load_generator", lambda spec, **_: loaded, raising=False)
    assert Settings(data_dir=tmp_path).stand_in_seconds_per_megapixel == 0
    assert running.generator_for(_runtime(tmp_path), "xSD4.5") is loaded


def test_the_stand_in_when_set(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(pipeline, "load_generator", pytest.fail, raising=False)
    runtime = _runtime(tmp_path, stand_in_seconds_per_megapixel=0.42)
    generator = running.generator_for(runtime, "xSD4.5")
    assert isinstance(generator, StandInGenerator)
    assert generator.seconds_per_megapixel == 0.42
    assert "BENCHMARK STAND-IN" in caplog.text


def test_unknown_models_are_still_refused(tmp_path):
    runtime = _runtime(tmp_path, stand_in_seconds_per_megapixel=0.42)
    with pytest.raises(pipeline.ModelUnavailable):
        running.generator_for(runtime, "nope")


def test_the_setting_reads_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("XSD_STAND_IN_SECONDS_PER_MEGAPIXEL", "0.42")
    assert Settings(data_dir=tmp_path).stand_in_seconds_per_megapixel == 0.42
