"""Typed settings, read from ``XSD_*`` environment variables.

Every knob an operator can turn lives here, once; the Helm chart's values map onto these
names one to one. Secrets that have no value in the environment are generated on first use
and kept under the data directory, so a single-machine install needs no configuration.
"""

from __future__ import annotations

import os
import secrets
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "URL_TTL_SECONDS_DEFAULT"]

URL_TTL_SECONDS_DEFAULT = 23 * 3600

_BOOLEAN_COMPILE = {"true": "dynamic", "1": "dynamic", "false": "off", "0": "off"}


class Settings(BaseSettings):
    """Operator configuration for every xsd process."""

    model_config = SettingsConfigDict(env_prefix="XSD_", extra="ignore", frozen=True)

    data_dir: Path = Field(Path(".xsd"), description="Embedded Redis files and local objects.")
    redis_url: str | None = Field(
        None, description="Broker, results and records; unset means an embedded redis-server."
    )

    storage: Literal["local", "s3"] = "local"
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_prefix: str = Field("", description="Key prefix inside the bucket.")
    s3_signing_access_key_id: SecretStr | None = Field(
        None, description="Long-lived key that only signs URLs (23 h outlives IRSA sessions)."
    )
    s3_signing_secret_access_key: SecretStr | None = None

    public_base_url: str | None = Field(
        None, description="Base of pollUrl and of local signed file URLs."
    )
    host: str = "127.0.0.1"
    port: int = 8000

    model_path: Path | None = Field(None, description="SDXL weights directory for xSD4.5.")
    device: str | None = Field(None, description="torch device for GPU workers; auto when unset.")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="UNet and text-encoder precision; auto: float16 on CUDA, else float32."
    )
    attention: Literal["sdpa", "xformers"] = Field(
        "sdpa", description="Attention kernel on CUDA; xformers needs the xformers extra."
    )
    compile: Literal["off", "dynamic", "static"] = Field(
        "off",
        description="torch.compile the UNet: off; dynamic (one graph for every shape, slow "
        "first batches); static (one graph per bucket and batch size, CUDA graphs on CUDA; a "
        "new shape compiles on first use, so list the expected ones in XSD_WARMUP_SIZES). "
        "true and false read as dynamic and off.",
    )
    channels_last: bool = Field(True, description="channels_last UNet layout on CUDA.")
    quantize: Literal["none", "int8", "fp8"] = Field(
        "none",
        description="The UNet's linear layers in 8 bits (torchao, the `quantize` extra): int8 "
        "on any device; fp8 on CUDA GPUs of compute capability 8.9+ (Ada, Hopper) only. Pays "
        "off compiled (XSD_COMPILE).",
    )
    vae_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="VAE precision. bfloat16 has float32's range; float16 only with a VAE "
        "fixed for it (SDXL's own overflows to black images).",
    )
    warmup_sizes: str = Field(
        "",
        description="Output sizes WIDTHxHEIGHT, comma-separated, that a GPU worker generates "
        "once at start, at every XSD_WARMUP_BATCH_SIZES, before it is ready and takes jobs: "
        "compiles their shapes (buckets, refinement tiles). Empty: no warm-up.",
    )
    warmup_batch_sizes: str = Field(
        "1", description="Images per warm-up pass, comma-separated (see XSD_WARMUP_SIZES)."
    )
    stand_in_seconds_per_megapixel: float = Field(
        0.0,
        ge=0,
        description="Benchmarks only, never in service: when above 0, GPU workers load no model "
        "and run pipeline.stand_in instead, which sleeps this long per output megapixel "
        "(1024x1024) and returns noise images. Unset or 0: the real model.",
    )

    url_ttl_seconds: int = Field(URL_TTL_SECONDS_DEFAULT, gt=0)
    record_retention_seconds: int = Field(30 * 86400, gt=0)
    job_timeout_seconds: int = Field(
        1800,
        gt=0,
        description="A job not terminal this long after POST fails with provider_timeout.",
    )
    lease_seconds: int = Field(
        60, gt=0, description="How long a worker's claim on a job lives without a heartbeat."
    )
    watch_seconds: float = Field(
        0.5,
        gt=0,
        description="How often a GPU worker checks that it still owns the jobs it runs (not "
        "cancelled, deleted or taken over); one it lost leaves its batch at the next step.",
    )
    idempotency_ttl_seconds: int = Field(86400, gt=0)

    rate_limit_per_minute: int = Field(500, gt=0, description="POST /v1/generations per key.")
    read_rate_limit_per_minute: int = Field(6000, gt=0, description="Every other call, per key.")
    max_body_bytes: int = Field(1_000_000, gt=0)
    b64_max_pixels: int = Field(
        16_777_216,
        gt=0,
        description="responseFormat b64_json carries at most this many pixels in all (images x "
        "width x height: one 4K image or four 2K squares); larger requests get 400.",
    )

    allow_private_urls: bool = Field(
        False, description="Lets webhook and reference URLs use http and private hosts: tests only."
    )
    reference_max_bytes: int = Field(10 * 1024 * 1024, gt=0)
    reference_timeout_seconds: float = Field(15.0, gt=0)
    reference_max_pixels: int = Field(
        50_000_000, gt=0, description="Pixel-bomb guard: the largest canvas a header may claim."
    )
    reference_decode_budget_bytes: int = Field(
        256 * 1024 * 1024,
        gt=0,
        description=(
            "Memory that decoding references may hold at once in one process (all threads); "
            "decodes wait for room, and an image whose decode needs more is refused. A "
            "decode's cost is its raster at the scale it decodes at (JPEG 1/8 to 1, others "
            "full size), 1-4 bytes a pixel, twice when its mode is converted first, plus "
            "the decoder's buffers (WebP: 12 bytes a pixel, progressive JPEG: its DCT "
            "coefficients). The default fits the chart's 1 GiB CPU worker and decodes a "
            "50 MP RGB PNG; the largest WebP it admits is about 3950x3950."
        ),
    )

    webhook_timeout_seconds: float = Field(10.0, gt=0)
    webhook_max_body_bytes: int = Field(
        4 * 1024 * 1024,
        gt=0,
        description="A b64_json webhook whose images would take its body past this carries "
        "each image's signed url instead (GET still inlines them).",
    )
    webhook_retry_seconds: int = Field(
        26 * 3600, gt=0, description="How long failed deliveries are retried before giving up."
    )
    webhook_backoff_base_seconds: float = Field(5.0, gt=0)
    webhook_backoff_max_seconds: float = Field(3600.0, gt=0)

    batch_max_jobs: int = Field(
        8, gt=0, description="Jobs a GPU worker gathers into one batch at most."
    )
    batch_wait_seconds: float = Field(
        0.5, gt=0, description="How long a GPU worker waits for a batch to fill."
    )
    gpu_pixel_budget: int = Field(
        8 * 1024 * 1024,
        gt=0,
        description="Generation pixels (images x bucket area) in one forward pass.",
    )
    upload_threads: int = Field(
        4, gt=0, description="Threads that encode images, and threads that store them."
    )
    upload_retry_seconds: float = Field(
        900.0,
        gt=0,
        description="How long a GPU worker keeps trying to store a finished image while the "
        "object store fails; past it the image is storage_failed (refunded).",
    )
    spool_max_bytes: int = Field(
        10 * 1024**3,
        gt=0,
        description="Finished images a GPU worker keeps on disk while they wait to be stored; "
        "above it the worker takes no new jobs until they drain.",
    )
    spool_dir: Path | None = Field(
        None, description="Where a GPU worker spools finished images; default <data dir>/spool."
    )

    tick_seconds: float = Field(5.0, gt=0, description="Period of the beat's reaper tick.")
    dispatch_grace_seconds: float = Field(
        10.0,
        gt=0,
        description="How long after POST a job may stay unsent before the tick sends it (the "
        "API died between the debit and the enqueue).",
    )
    dispatch_retry_seconds: float = Field(
        300.0,
        gt=0,
        description="A sent job no worker has claimed this long is sent again, then after "
        "twice as long, and so on until it is claimed or its deadline passes.",
    )
    broker_visibility_timeout: int = Field(
        900, gt=0, description="Seconds before an unacked Celery message is redelivered."
    )
    metrics_port: int | None = Field(
        None, description="Workers and the beat serve /metrics, /healthz, /readyz on this port."
    )
    metrics_host: str | None = Field(
        None,
        description="Interface of that port; unset means XSD_HOST, where the API binds "
        "(a loopback-only install stays loopback-only). Clusters set 0.0.0.0.",
    )
    moderation_blocklist: Path | None = Field(
        None, description="Extra blocked terms, one per line, added to the built-in list."
    )

    api_key_pepper: SecretStr | None = None
    url_signing_key: SecretStr | None = None

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_as_boolean(cls, value: object) -> object:
        # XSD_COMPILE used to be a boolean: true still means dynamic shapes, false off.
        if isinstance(value, bool):
            return "dynamic" if value else "off"
        return _BOOLEAN_COMPILE.get(str(value).strip().lower(), value)

    @field_validator("warmup_sizes")
    @classmethod
    def _sizes(cls, value: str) -> str:
        _parse_sizes(value)
        return value

    @field_validator("warmup_batch_sizes")
    @classmethod
    def _batch_sizes(cls, value: str) -> str:
        _parse_batch_sizes(value)
        return value

    @model_validator(mode="after")
    def _uploads_end_before_the_job(self) -> Settings:
        # A job whose uploads were still retried at its deadline would be failed (and
        # refunded) by the reaper while its images went on being stored.
        if self.upload_retry_seconds >= self.job_timeout_seconds:
            raise ValueError(
                "XSD_UPLOAD_RETRY_SECONDS must be shorter than XSD_JOB_TIMEOUT_SECONDS."
            )
        return self

    @property
    def redis_dir(self) -> Path:
        """Where the embedded redis-server keeps its files."""
        return self.data_dir / "redis"

    @property
    def spool_path(self) -> Path:
        """Where finished images wait to be stored."""
        return self.spool_dir or self.data_dir / "spool"

    @property
    def objects_dir(self) -> Path:
        """Root of the local object store."""
        return self.data_dir / "objects"

    def warmup_shapes(self) -> list[tuple[int, int]]:
        """``XSD_WARMUP_SIZES`` as (width, height) pairs; empty for no warm-up."""
        return _parse_sizes(self.warmup_sizes)

    def warmup_batches(self) -> list[int]:
        """``XSD_WARMUP_BATCH_SIZES`` as integers."""
        return _parse_batch_sizes(self.warmup_batch_sizes)

    def metrics_interface(self) -> str:
        """Where workers and the beat serve their metrics and probes."""
        return self.metrics_host or self.host

    def base_url(self) -> str:
        """Public base URL without a trailing slash."""
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        return f"http://{self.host}:{self.port}"

    @cached_property
    def pepper(self) -> bytes:
        """Secret mixed into API-key hashes, so a Redis dump alone cannot verify keys."""
        return self._secret(self.api_key_pepper, "api_key_pepper")

    @cached_property
    def signing_key(self) -> bytes:
        """Secret that signs local-store file URLs."""
        return self._secret(self.url_signing_key, "url_signing_key")

    def _secret(self, configured: SecretStr | None, name: str) -> bytes:
        if configured is not None:
            return configured.get_secret_value().encode()
        path = self.data_dir / "secrets" / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Written aside, then linked into place: when several processes start at once,
            # exactly one secret wins and nobody reads a half-written file.
            scratch = path.with_name(f".{name}.{secrets.token_hex(4)}")
            scratch.write_text(secrets.token_hex(32), encoding="ascii")
            scratch.chmod(0o600)
            try:
                os.link(scratch, path)
            except FileExistsError:
                pass
            finally:
                scratch.unlink()
        return path.read_text(encoding="ascii").strip().encode()


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"1024x1024, 2048x2048"`` to ``[(1024, 1024), (2048, 2048)]``; empty to ``[]``."""
    sizes = []
    for part in filter(None, (part.strip().lower() for part in text.split(","))):
        width, sep, height = part.partition("x")
        if not (sep and width.isdigit() and height.isdigit() and int(width) and int(height)):
            raise ValueError(f"sizes are WIDTHxHEIGHT, comma-separated; got {part!r}.")
        sizes.append((int(width), int(height)))
    return sizes


def _parse_batch_sizes(text: str) -> list[int]:
    """``"1,2,4"`` to ``[1, 2, 4]``: at least one, each at least 1."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() and int(part) >= 1 for part in parts):
        raise ValueError(f"batch sizes are integers of at least 1, comma-separated; got {text!r}.")
    return [int(part) for part in parts]
