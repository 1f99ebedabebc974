"""Model aliases and what each one loads.

``xSD4.5`` is an SDXL weights directory when ``XSD_MODEL_PATH`` names one, else ``tiny``:
the SDXL architecture with a small configuration and random weights, built in memory, so
the whole service runs offline on a CPU (its images are noise). ``sdxl-random`` is the
full SDXL configuration with random weights: SDXL's exact compute, for benchmarks.

Each alias also names its scheduler, its precision and its tokenizers. A weights
directory's own ``tokenizer/`` and ``tokenizer_2/`` are used where it has them; the random
models, and a directory without them, use CLIP's BPE that ships in ``pipeline/data``
(SDXL's vocabulary for both text encoders).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .buckets import bucket_for
from .errors import ModelUnavailable
from .geometry import Size

__all__ = [
    "CLIP_TOKENIZER",
    "DType",
    "PUBLIC_ALIAS",
    "SDXL_RANDOM",
    "TINY",
    "WEIGHTS_TOKENIZER",
    "ModelRegistry",
    "ModelSpec",
    "SchedulerName",
    "TokenizerSource",
]

PUBLIC_ALIAS = "xSD4.5"
TINY = "tiny"
SDXL_RANDOM = "sdxl-random"

# Precision of the UNet and text encoders; auto: float16 on CUDA, else float32.
DType = Literal["auto", "float16", "bfloat16", "float32"]
# Denoising schedulers by name (pipeline.components maps them to diffusers classes).
SchedulerName = Literal["euler"]
# CLIP's BPE from pipeline/data for both encoders, or the weights directory's tokenizers.
CLIP_TOKENIZER = "clip"
WEIGHTS_TOKENIZER = "weights"
TokenizerSource = Literal["clip", "weights"]


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """One loadable model."""

    alias: str
    source: str | Path  # TINY, SDXL_RANDOM, or a weights directory
    steps: int
    base_resolution: int
    bucket_multiple: int
    description: str
    scheduler: SchedulerName
    # The model's precision; XSD_DTYPE, when set, overrides it (pipeline.acceleration).
    dtype: DType
    # WEIGHTS_TOKENIZER: <weights>/tokenizer and <weights>/tokenizer_2, each where present,
    # else CLIP_TOKENIZER's.
    tokenizer: TokenizerSource

    def __post_init__(self) -> None:
        if self.tokenizer == WEIGHTS_TOKENIZER and self.kind != "weights":
            raise ValueError(f"{self.alias}: only a weights directory has its own tokenizers.")

    def bucket(self, width: int, height: int) -> Size:
        """The resolution this model generates a ``width x height`` image at."""
        return bucket_for(width, height, base=self.base_resolution, multiple=self.bucket_multiple)

    @property
    def kind(self) -> str:
        """``tiny``, ``sdxl-random`` or ``weights``."""
        return self.source if isinstance(self.source, str) else "weights"

    def weights_dir(self) -> Path:
        """The validated weights directory of a ``weights`` model."""
        assert isinstance(self.source, Path)
        if not (self.source / "model_index.json").is_file():
            raise ModelUnavailable(
                f"{self.alias}: {self.source} is not a diffusers SDXL directory (no "
                "model_index.json); check XSD_MODEL_PATH."
            )
        return self.source


def _tiny(alias: str) -> ModelSpec:
    return ModelSpec(
        alias=alias,
        source=TINY,
        steps=4,
        base_resolution=64,
        bucket_multiple=4,
        description="SDXL architecture, tiny configuration, random weights: offline testing "
        "only, its images are noise.",
        scheduler="euler",
        dtype="auto",
        tokenizer=CLIP_TOKENIZER,
    )


def _sdxl(alias: str, source: str | Path, description: str) -> ModelSpec:
    return ModelSpec(
        alias=alias,
        source=source,
        steps=30,
        base_resolution=1024,
        bucket_multiple=64,
        description=description,
        # SDXL base 1.0's: Euler, float16 on CUDA, and the tokenizers its directory ships.
        scheduler="euler",
        dtype="auto",
        tokenizer=WEIGHTS_TOKENIZER if isinstance(source, Path) else CLIP_TOKENIZER,
    )


class ModelRegistry:
    """Aliases to specs."""

    def __init__(self, specs: list[ModelSpec]) -> None:
        self._specs = {spec.alias: spec for spec in specs}

    @classmethod
    def from_config(
        cls, model_path: Path | None, *, include_benchmark_models: bool = False
    ) -> ModelRegistry:
        """The public alias, on real weights when ``model_path`` is set; optionally the
        benchmark models too."""
        public = (
            _sdxl(PUBLIC_ALIAS, Path(model_path), "SDXL-class model, 2K-4K output.")
            if model_path
            else _tiny(PUBLIC_ALIAS)
        )
        specs = [public]
        if include_benchmark_models:
            specs += [
                _tiny(TINY),
                _sdxl(SDXL_RANDOM, SDXL_RANDOM, "Full SDXL configuration, random weights."),
            ]
        return cls(specs)

    def aliases(self) -> list[str]:
        """Registered aliases, public first."""
        return list(self._specs)

    def get(self, alias: str) -> ModelSpec:
        """The spec of an alias."""
        try:
            return self._specs[alias]
        except KeyError:
            raise ModelUnavailable(
                f"Model {alias!r} is not available; use one of {', '.join(self._specs)}."
            ) from None

    def describe(self) -> list[dict[str, Any]]:
        """The public listing (``GET /v1/models``)."""
        return [
            {"alias": s.alias, "description": s.description, "defaultSteps": s.steps}
            for s in self._specs.values()
        ]
