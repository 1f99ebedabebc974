"""Rendering the chart offline: helm-python-sdk (Helm v4 as a library), no cluster.

Every test renders helm/xsd through :func:`render` with one of the value sets below and
works on the parsed manifests (:class:`Manifests`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

try:
    import helm_python as helm
except ImportError:  # the `helm` extra is missing: `make test-helm` installs it
    collect_ignore_glob = ["test_*.py"]

CHART = Path(__file__).resolve().parents[2] / "helm" / "xsd"
RELEASE = "rel"
NAMESPACE = "xsd"
KUBE_VERSION = "1.33.0"
# Prefix of the chart's object names (the Redis subchart's are "<release>-redis").
PREFIX = f"{RELEASE}-xsd"

# The smallest install: the required secrets, everything else from values.yaml.
MINIMAL: dict[str, Any] = {
    "secrets": {
        "apiKeyPepper": {"value": "pepper-0123456789abcdef"},
        "urlSigningKey": {"value": "signing-0123456789abcdef"},
    },
    "redis": {"auth": {"password": "redispass0123"}},
}

# GPU pools scaled by KEDA, Prometheus Operator and Grafana wired in, weights from a claim.
GPU_KEDA_MONITORING: dict[str, Any] = {
    **copy.deepcopy(MINIMAL),
    "cpuWorker": {"keda": {"enabled": True}, "autoscaling": {"enabled": True}},
    "gpuWorkers": {"defaults": {"keda": {"enabled": True, "minReplicaCount": 0}}},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "dashboard": {"enabled": True, "annotations": {"grafana_folder": "xSD"}},
    "models": {"source": "pvc", "pvc": {"claimName": "sdxl-weights"}},
    "moderation": {"blocklist": ["forbidden phrase", "another"]},
}

# A managed Redis over TLS, S3 storage, every secret taken from existing Secrets (S3 needs
# no URL signing key), and the weights copied from S3 by an init container.
EXTERNAL: dict[str, Any] = {
    "redis": {"enabled": False},
    "externalRedis": {
        "url": "rediss://master.xsd.abc123.use1.cache.amazonaws.com:6380/2",
        "existingSecret": "xsd-redis",
    },
    "config": {
        "storage": "s3",
        "s3Bucket": "xsd-images",
        "publicBaseUrl": "https://api.example.net",
    },
    "secrets": {
        "apiKeyPepper": {"existingSecret": "xsd-keys"},
        "s3": {"existingSecret": "xsd-s3-signer"},
    },
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/xsd"}},
    "models": {"source": "s3", "s3": {"uri": "s3://xsd-models/sdxl/"}},
    "gpuWorkers": {"defaults": {"keda": {"enabled": True}}},
}

VALUE_SETS = {
    "minimal": MINIMAL,
    "gpu-keda-monitoring": GPU_KEDA_MONITORING,
    "external": EXTERNAL,
}


def merged(base: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with top-level blocks deep-merged from ``overrides``."""
    result = copy.deepcopy(base)

    def merge(into: dict[str, Any], new: dict[str, Any]) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = copy.deepcopy(value)

    merge(result, overrides)
    return result


class Manifests:
    """The objects of one render, searchable by kind and name."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files
        self.objects: list[dict[str, Any]] = [
            doc
            for name, text in sorted(files.items())
            if name.endswith((".yaml", ".yml"))
            for doc in yaml.safe_load_all(text)
            if doc
        ]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """Every object of a kind."""
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        """The one object of this kind and name."""
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: found {len(found)}"
        return found[0]

    def names(self, kind: str) -> set[str]:
        """Names of every object of a kind."""
        return {o["metadata"]["name"] for o in self.of_kind(kind)}

    def workloads(self) -> Iterator[dict[str, Any]]:
        """Deployments and StatefulSets."""
        for obj in self.objects:
            if obj["kind"] in ("Deployment", "StatefulSet"):
                yield obj


def render_files(values: dict[str, Any]) -> dict[str, str]:
    """Render as `helm install` would: template path -> text.

    The chart is loaded afresh each time: rendering drops disabled subcharts from the
    loaded chart itself (Helm processes dependency conditions in place), so a chart
    rendered once with redis.enabled=false would have no Redis for the next render.
    """
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


@pytest.fixture(scope="session")
def chart() -> Iterator[Any]:
    """The chart, loaded once: for its values and schema, not for rendering."""
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render():
    """``render(values) -> Manifests``."""
    return lambda values: Manifests(render_files(values))


def container(workload: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """A workload's (only, or named) container."""
    containers = workload["spec"]["template"]["spec"]["containers"]
    if name is None:
        assert len(containers) == 1
        return containers[0]
    return next(c for c in containers if c["name"] == name)


def env_names(c: dict[str, Any]) -> list[str]:
    """Names of a container's env vars, in order."""
    return [e["name"] for e in c.get("env", [])]


def env_value(c: dict[str, Any], name: str) -> dict[str, Any]:
    """The env entry of one variable."""
    return next(e for e in c["env"] if e["name"] == name)
