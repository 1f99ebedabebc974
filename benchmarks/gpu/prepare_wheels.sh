#!/usr/bin/env bash
# Downloads, into .whl/ at the repository root, the wheels a GPU machine without network
# needs to run benchmarks/gpu/run.sh: the pipeline's stack except torch, numpy and Pillow,
# which that machine (Python 3.12, x86_64, CUDA torch) already has. Run it here, then carry
# .whl (ignored by .gitignore) with the run: the device tool's `carry: [".whl"]`. run.sh
# installs it with --no-deps.
#
# Pins: pyproject.toml where it names the package, else the version of the tested lock (the
# venv these tests run in). The set is the pipeline's import closure rather than every
# declared dependency: what diffusers, transformers and the hub import when the benchmark
# runs, plus what transformers' import-time version check reads (tqdm, regex, packaging,
# filelock, pyyaml). hf-xet, typer and fsspec are declared but only imported by downloads
# and the CLIs, so they stay out (the set stays near 30 MiB).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEST="$ROOT/.whl"

WHEELS=(
    # pyproject.toml, the `inference` extra and the base pins
    diffusers==0.42.1
    transformers==5.24.0
    accelerate==1.15.0
    safetensors==0.8.0
    tokenizers==0.23.3
    urllib3==2.8.0
    pyyaml==6.0.4
    # the `quantize` extra (the fp8-static step)
    torchao==0.18.0
    # the lock: transformers 5 and diffusers 0.42 need huggingface-hub 1.3x or later, whose
    # HTTP client is httpx2; diffusers still imports requests.
    huggingface-hub==2.4.0
    httpx2==2.16.2
    httpcore2==2.16.2
    anyio==4.16.0
    h11==0.16.0
    idna==3.20
    truststore==0.10.5
    typing-extensions==4.16.0
    requests==2.34.2
    charset-normalizer==3.5.3
    certifi==2026.10.19.post1
    regex==2026.11.19
    tqdm==4.70.1
    packaging==26.4
    filelock==4.3.1
    psutil==7.2.2
)

mkdir -p "$DEST"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEST" "${WHEELS[@]}"
du -sh "$DEST"
