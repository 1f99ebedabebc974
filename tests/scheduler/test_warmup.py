"""The fast-path settings reach the pipeline, and a GPU worker warms up its model (compiles
the configured shapes) before it is ready and consumes anything."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from celery.signals import worker_ready
from pydantic import ValidationError

import pipeline
from pipeline import ModelRegistry
from scheduler import metrics
from scheduler.process import health, worker
from scheduler.settings import Settings
from scheduler.stages import running, uploading


@pytest.fixture(autouse=True)
def _fresh_process(monkeypatch):
    """No model loaded, not ready, no receivers or hooks left from another test."""
    monkeypatch.setattr(running, "_generators", {})
    monkeypatch.setattr(health, "ready", threading.Event())
    monkeypatch.setattr(worker_ready, "receivers", [])
    monkeypatch.setattr(uploading, "_spool_hooks", [])


def _runtime(tmp_path, **settings):
    return SimpleNamespace(
        registry=ModelRegistry.from_config(None),
        settings=Settings(data_dir=tmp_path, **settings),
    )


# -- settings -------------------------------------------------------------------------------


def test_everything_is_off_by_default(tmp_path):
    settings = Settings(data_dir=tmp_path)
    assert (settings.compile, settings.quantize, settings.vae_dtype) == ("off", "none", "float32")
    assert settings.warmup_shapes() == [] and settings.warmup_batches() == [1]


def test_the_settings_read_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("XSD_COMPILE", "static")
    monkeypatch.setenv("XSD_QUANTIZE", "int8")
    monkeypatch.setenv("XSD_VAE_DTYPE", "bfloat16")
    monkeypatch.setenv("XSD_WARMUP_SIZES", "1024x1024, 2048x1536")
    monkeypatch.setenv("XSD_WARMUP_BATCH_SIZES", "1,2,4")
    settings = Settings(data_dir=tmp_path)
    assert (settings.compile, settings.quantize, settings.vae_dtype) == (
        "static",
        "int8",
        "bfloat16",
    )
    assert settings.warmup_shapes() == [(1024, 1024), (2048, 1536)]
    assert settings.warmup_batches() == [1, 2, 4]


@pytest.mark.parametrize(
    ("value", "mode"), [("true", "dynamic"), ("false", "off"), ("1", "dynamic")]
)
def test_a_boolean_compile_still_reads(tmp_path, monkeypatch, value, mode):
    monkeypatch.setenv("XSD_COMPILE", value)
    assert Settings(data_dir=tmp_path).compile == mode


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("compile", "fast"),
        ("quantize", "int4"),
        ("vae_dtype", "half"),
        ("warmup_sizes", "1024"),
        ("warmup_sizes", "1024x"),
        ("warmup_sizes", "0x1024"),
        ("warmup_batch_sizes", "0"),
        ("warmup_batch_sizes", ""),
        ("warmup_batch_sizes", "1,two"),
    ],
)
def test_bad_values_are_refused_by_name(tmp_path, field, value):
    with pytest.raises(ValidationError, match=field):
        Settings(data_dir=tmp_path, **{field: value})


def test_the_options_reach_the_pipeline(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(
        pipeline, "load_generator", lambda spec, **kw: seen.update(kw) or object(), raising=False
    )
    runtime = _runtime(tmp_path, compile="static", quantize="int8", vae_dtype="bfloat16")
    running.generator_for(runtime, "xSD4.5")
    options = seen["acceleration"]
    assert (options.compile, options.quantize, options.vae_dtype) == ("static", "int8", "bfloat16")


# -- warm-up at start -----------------------------------------------------------------------


def test_no_warm_up_without_sizes(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "load_generator", pytest.fail, raising=False)
    assert running.warm_up(_runtime(tmp_path), "xSD4.5") is None


def test_warm_up_runs_every_size_at_every_batch_size(tmp_path, monkeypatch):
    """On the tiny model for real; the passes are the ones the worker would form."""
    runtime = _runtime(tmp_path, warmup_sizes="64x64,80x48", warmup_batch_sizes="1,2")
    generator = running.generator_for(runtime, "xSD4.5")
    passes = []
    real = generator.generate_batch

    def recording(requests, **kwargs):
        passes.append([(r.width, r.height, r.steps) for r in requests])
        return real(requests, **kwargs)

    monkeypatch.setattr(generator, "generate_batch", recording)
    seconds = running.warm_up(runtime, "xSD4.5")
    steps = running.WARMUP_STEPS
    assert passes == [
        [(64, 64, steps)],
        [(64, 64, steps)] * 2,
        [(80, 48, steps)],
        [(80, 48, steps)] * 2,
    ]
    assert seconds is not None and seconds > 0
    assert metrics.WARMUP_SECONDS.labels("xSD4.5")._value.get() == seconds


def test_the_worker_warms_up_before_it_is_ready(redis_url, tmp_path, monkeypatch):
    """run_worker: the model is loaded and warmed up before Celery starts consuming, and
    /readyz turns ready only once Celery says the worker is ready."""
    settings = Settings(
        data_dir=tmp_path, redis_url=redis_url, warmup_sizes="64x64", warmup_batch_sizes="2"
    )
    metrics.WARMUP_SECONDS.labels("xSD4.5").set(0)
    at_start = {}

    def worker_main(argv):
        at_start["warmed"] = metrics.WARMUP_SECONDS.labels("xSD4.5")._value.get() > 0
        at_start["ready"] = health.ready.is_set()
        worker_ready.send(sender=object())  # what Celery sends once it consumes

    monkeypatch.setattr(worker.app, "worker_main", worker_main)
    worker.run_worker(settings, queues="gpu", concurrency=None, hostname=None)
    assert at_start == {"warmed": True, "ready": False}
    assert health.ready.is_set()


def test_a_worker_whose_fast_path_cannot_run_exits_before_taking_jobs(
    redis_url, tmp_path, monkeypatch
):
    settings = Settings(data_dir=tmp_path, redis_url=redis_url, quantize="fp8")
    monkeypatch.setattr(worker.app, "worker_main", pytest.fail)
    with pytest.raises(SystemExit) as exit_:
        worker.run_worker(settings, queues="gpu", concurrency=None, hostname=None)
    assert exit_.value.code == worker.EXIT_MODEL_UNAVAILABLE
    assert not health.ready.is_set()
