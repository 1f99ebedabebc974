"""Prometheus metric families, defined once for every process.

Names carry their unit; labels are bounded (routes, queues, size classes, codes), never
request ids, emails or prompts. Each process exposes its own registry (the API on
``/metrics``, workers and the beat on ``XSD_METRICS_PORT``); Prometheus sums across pods.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import REGISTRY, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "JOBS_FINISHED",
    "QUEUE_WAIT",
    "GPU_SECONDS",
    "END_TO_END",
    "BATCH_JOBS",
    "BATCH_IMAGES",
    "IMAGES_GENERATED",
    "JOBS_STOPPED",
    "DENOISE_STEP",
    "CLAIM_SECONDS",
    "UPLOAD_BACKLOG_WAIT",
    "PNG_ENCODE",
    "SPOOL_WRITE",
    "RECORD_SUCCESS",
    "WEBHOOK_DELIVERY",
    "STORAGE_UPLOAD",
    "STORAGE_FAILURES",
    "STORAGE_GIVE_UPS",
    "SPOOL_BYTES",
    "WEBHOOK_ATTEMPTS",
    "WEBHOOK_GIVE_UPS",
    "XTOKENS_DEBITED",
    "XTOKENS_REFUNDED",
    "GPU_IDLE",
    "WARMUP_SECONDS",
    "QueueDepthCollector",
    "InFlightCollector",
    "GpuCollector",
    "register_once",
]

log = logging.getLogger(__name__)

# Seconds from a fraction of a second (tiny, small batches) to tens of minutes (4K on a
# busy pool).
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
_COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

JOBS_FINISHED = Counter(
    "xsd_jobs_finished", "Jobs that reached a terminal status", ["status", "code"]
)
# account_class is the account's share class (default, weighted, capped), never its name.
QUEUE_WAIT = Histogram(
    "xsd_queue_wait_seconds",
    "From POST to a GPU worker claiming the job",
    ["size_class", "account_class"],
    buckets=_LATENCY_BUCKETS,
)
GPU_SECONDS = Histogram(
    "xsd_gpu_seconds",
    "GPU time of one batch (pipeline call)",
    ["size_class"],
    buckets=_LATENCY_BUCKETS,
)
END_TO_END = Histogram(
    "xsd_end_to_end_seconds",
    "From POST to the job succeeding",
    ["size_class"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_JOBS = Histogram("xsd_batch_jobs", "Jobs per GPU batch", buckets=_COUNT_BUCKETS)
BATCH_IMAGES = Histogram("xsd_batch_images", "Images per GPU batch", buckets=_COUNT_BUCKETS)
IMAGES_GENERATED = Counter("xsd_images_generated", "Images produced by the pipeline")
JOBS_STOPPED = Counter(
    "xsd_jobs_stopped",
    "Jobs a GPU worker stopped mid-batch: cancelled, deleted or taken over by another worker",
)
DENOISE_STEP = Histogram(
    "xsd_denoise_step_seconds",
    "Time of one denoising step of a batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
STORAGE_UPLOAD = Histogram(
    "xsd_storage_upload_seconds",
    "Time to store one object",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
STORAGE_FAILURES = Counter(
    "xsd_storage_failures", "Object store operations that failed", ["operation"]
)
STORAGE_GIVE_UPS = Counter(
    "xsd_storage_give_ups", "Images given up as storage_failed after retrying to store them"
)
SPOOL_BYTES = Gauge(
    "xsd_spool_bytes", "Finished images a GPU worker holds on disk until they are stored"
)
WEBHOOK_ATTEMPTS = Counter(
    "xsd_webhook_attempts", "Webhook delivery attempts by outcome", ["outcome"]
)
WEBHOOK_GIVE_UPS = Counter("xsd_webhook_give_ups", "Webhooks abandoned after retrying")
XTOKENS_DEBITED = Counter("xsd_xtokens_debited", "xTokens debited at POST")
XTOKENS_REFUNDED = Counter("xsd_xtokens_refunded", "xTokens refunded")
GPU_IDLE = Counter("xsd_gpu_idle_seconds", "Time a GPU worker waited for work between batches")
# Where a GPU worker's time goes besides the GPU, and the CPU worker's on webhooks: the
# pool's own cost at GPU rates (benchmarks/pool.py --stand-in reads them).
_STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
CLAIM_SECONDS = Histogram(
    "xsd_claim_seconds",
    "Time a GPU worker spent claiming a batch's jobs and reading their records and references",
    buckets=_STAGE_BUCKETS,
)
UPLOAD_BACKLOG_WAIT = Histogram(
    "xsd_upload_backlog_wait_seconds",
    "Time the GPU thread waited for room in the encoding backlog to hand a job's images over",
    buckets=_STAGE_BUCKETS,
)
PNG_ENCODE = Histogram(
    "xsd_png_encode_seconds",
    "Time to encode one finished image as PNG",
    ["size_class"],
    buckets=_STAGE_BUCKETS,
)
SPOOL_WRITE = Histogram(
    "xsd_spool_write_seconds",
    "Time to write one job's encoded images to the upload spool",
    buckets=_STAGE_BUCKETS,
)
RECORD_SUCCESS = Histogram(
    "xsd_record_success_seconds",
    "Time to record a job's success once its images are stored",
    buckets=_STAGE_BUCKETS,
)
WEBHOOK_DELIVERY = Histogram(
    "xsd_webhook_delivery_seconds",
    "Time of one webhook delivery attempt, rendering the body included",
    buckets=_STAGE_BUCKETS,
)
WARMUP_SECONDS = Gauge(
    "xsd_warmup_seconds",
    "How long a GPU worker's start-up warm-up (XSD_WARMUP_SIZES) took, per model",
    ["model"],
)


class QueueDepthCollector(Collector):
    """``xsd_queue_depth{queue}``: Celery queue lengths (Redis lists), read at scrape."""

    def __init__(self, length_of: Callable[[str], int], queues: Callable[[], Iterable[str]]):
        self._length_of, self._queues = length_of, queues

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "xsd_queue_depth", "Messages waiting in a queue", labels=["queue"]
        )
        for queue in self._queues():
            try:
                family.add_metric([queue], self._length_of(queue))
            except Exception:  # a scrape must not fail because Redis blinked
                log.warning("could not read the length of %s", queue, exc_info=True)
        yield family


class InFlightCollector(Collector):
    """``xsd_inflight_images{queue}``: images GPU workers have claimed and not finished,
    per GPU queue, read from Redis at scrape."""

    def __init__(self, in_flight: Callable[[], dict[str, int]]):
        self._in_flight = in_flight

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "xsd_inflight_images",
            "Images claimed by GPU workers and not finished",
            labels=["queue"],
        )
        try:
            counts = self._in_flight()
        except Exception:  # a scrape must not fail because Redis blinked
            log.warning("could not read the images in flight", exc_info=True)
            counts = {}
        for queue, images in counts.items():
            family.add_metric([queue], images)
        yield family


class GpuCollector(Collector):
    """GPU memory and utilisation through NVML, read at scrape; silent without a GPU."""

    def __init__(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._count = pynvml.nvmlDeviceGetCount()
        except Exception:  # no driver, no library, no GPU: nothing to report
            self._nvml, self._count = None, 0

    def collect(self) -> Iterator[Metric]:
        if self._nvml is None:
            return
        used = GaugeMetricFamily("xsd_gpu_memory_used_bytes", "GPU memory in use", labels=["gpu"])
        total = GaugeMetricFamily("xsd_gpu_memory_total_bytes", "GPU memory", labels=["gpu"])
        busy = GaugeMetricFamily(
            "xsd_gpu_utilization_ratio", "Fraction of time the GPU was busy", labels=["gpu"]
        )
        for index in range(self._count):
            handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
            memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
            used.add_metric([str(index)], memory.used)
            total.add_metric([str(index)], memory.total)
            busy.add_metric([str(index)], rates.gpu / 100)
        yield from (used, total, busy)


_registered: set[str] = set()


def register_once(name: str, collector: Collector) -> None:
    """Register a collector in this process unless one of that name already is."""
    if name in _registered:
        return
    with contextlib.suppress(ValueError):
        REGISTRY.register(collector)
    _registered.add(name)
