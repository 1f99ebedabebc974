# The image every process of the Helm chart runs (`xsd api`, `xsd worker`, `xsd beat`).
#
#   docker build -t xsd:0.1.0 .                                   # CUDA 12.8 build of torch
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu -t xsd:cpu .
#
# One image for all roles keeps the chart simple; API pods never import torch, so the
# CUDA libraries only cost image size there.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/xsd
# torch first, from the index that matches the GPU driver; the project pins the release.
RUN /opt/xsd/bin/pip install --index-url "${TORCH_INDEX}" torch==2.13.0
COPY pyproject.toml README.md /src/
COPY api_shim /src/api_shim
COPY scheduler /src/scheduler
COPY pipeline /src/pipeline
COPY storage /src/storage
COPY benchmarks /src/benchmarks
# quantize: torchao for XSD_QUANTIZE (a few MB).
RUN /opt/xsd/bin/pip install "/src[inference,quantize]"

FROM python:${PYTHON_VERSION}-slim
COPY --from=build /opt/xsd /opt/xsd
# The chart runs as this user with a read-only root filesystem; /tmp and the data directory
# are emptyDirs there.
RUN useradd --uid 10001 --create-home xsd && mkdir -p /var/lib/xsd && chown xsd /var/lib/xsd
USER 10001
ENV PATH=/opt/xsd/bin:$PATH PYTHONUNBUFFERED=1 XSD_DATA_DIR=/var/lib/xsd HF_HUB_OFFLINE=1
EXPOSE 8000 9100
ENTRYPOINT []
CMD ["xsd", "api", "--host", "0.0.0.0", "--port", "8000"]
