"""Lint the chart and validate every rendered object against Kubernetes' schemas.

kubernetes-validate ships the JSON schemas of the core Kubernetes API only. The two custom
resources the chart renders (KEDA's ScaledObject, the Prometheus Operator's ServiceMonitor)
are checked against the minimal schemas below instead: the fields the chart sets, with the
types their CRDs declare (KEDA trigger metadata is a map of strings, for example).
"""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from .conftest import CHART, KUBE_VERSION, NAMESPACE, VALUE_SETS, helm

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "labels": _STRING_MAP},
}

CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string"}},
                    },
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "cooldownPeriod": {"type": "integer", "minimum": 0},
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "metadata"],
                            "properties": {
                                "type": {"const": "redis"},
                                "metadata": {
                                    **_STRING_MAP,
                                    "required": ["address", "listName", "listLength"],
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "additionalProperties": False,
                "properties": {
                    "selector": {"type": "object"},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["port", "path"],
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string", "pattern": "^/"},
                                "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                                "scrapeTimeout": {
                                    "type": "string",
                                    "pattern": "^[0-9]+(ms|s|m|h)$",
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_lint_is_clean(values_name: str) -> None:
    report = helm.lint(
        CHART,
        VALUE_SETS[values_name],
        strict=True,
        namespace=NAMESPACE,
        with_subcharts=True,
        kube_version=f"v{KUBE_VERSION}",
    )
    # Severity 1 is informational ("icon is recommended"); 2 and 3 are warnings and errors.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


def test_redis_dependency_is_vendored() -> None:
    assert helm.dependency_list(CHART) == [
        {
            "name": "redis",
            "version": "0.1.0",
            "repository": "file://charts/redis",
            "status": "unpacked",
        }
    ]


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_every_object_validates(render, values_name: str) -> None:
    manifests = render(VALUE_SETS[values_name])
    assert manifests.objects
    for obj in manifests.objects:
        crd_schema = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if crd_schema is not None:
            try:
                jsonschema.Draft7Validator(crd_schema).validate(obj)
            except jsonschema.ValidationError as exc:
                pytest.fail(f"{where}: {exc.message} at {list(exc.absolute_path)}")
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {exc.message} at {list(exc.absolute_path)}")


def test_custom_resources_are_all_known(render) -> None:
    """Every kind outside Kubernetes' own API groups has a schema above, so nothing is
    skipped silently."""
    manifests = render(VALUE_SETS["gpu-keda-monitoring"])
    custom = {
        (o["apiVersion"], o["kind"])
        for o in manifests.objects
        if "." in o["apiVersion"].split("/")[0]
        and not o["apiVersion"].split("/")[0].endswith(".k8s.io")
    }
    assert custom == set(CRD_SCHEMAS)
