"""values.yaml and values.schema.json: documented, validated, and one to one with Settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from scheduler.settings import Settings

from .conftest import CHART, GPU_KEDA_MONITORING, MINIMAL, PREFIX, helm, merged, render_files

# XSD_* settings the chart derives from other values instead of taking them from `config`.
DERIVED = {
    "redis_url": "redis.* or externalRedis.* (env XSD_REDIS_URL)",
    "model_path": "models.* (ConfigMap)",
    "moderation_blocklist": "moderation.blocklist (ConfigMap, file)",
    "api_key_pepper": "secrets.apiKeyPepper (Secret)",
    "url_signing_key": "secrets.urlSigningKey (Secret)",
    "s3_signing_access_key_id": "secrets.s3Signing (Secret)",
    "s3_signing_secret_access_key": "secrets.s3Signing (Secret)",
    "host": "the api container's --host argument",
    "port": "the api container's --port argument (api.port)",
}
# config defaults that differ from the process's on purpose (see values.yaml).
DIFFERENT_DEFAULTS = {"data_dir", "metrics_port", "metrics_host"}


def _snake(camel: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", camel).lower()


# -- schema --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"api": {"replicas": -1}},
        {"cpuWorker": {"replicas": -1}},
        {"gpuWorkers": {"defaults": {"replicas": -3}}},
        {"gpuWorkers": {"pools": [{"name": "2k", "queues": ["gpu.xsd45.2k"], "replicas": -1}]}},
    ],
    ids=["api", "cpu-worker", "gpu-defaults", "gpu-pool"],
)
def test_schema_rejects_negative_replicas(chart, bad: dict[str, Any]) -> None:
    values = merged(MINIMAL, **bad)
    with pytest.raises(helm.HelmValuesError, match="replicas"):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmError, match="minimum"):
        render_files(values)


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"config": {"storage": "gcs"}}, "storage"),
        ({"config": {"redisUrl": "redis://x"}}, "redisUrl"),
        ({"config": {"storage": "s3"}}, "s3Bucket"),
        ({"gpuWorkers": {"pools": [{"name": "2k", "queues": ["gpu2k"]}]}}, "queues"),
        ({"gpuWorkers": {"pools": [{"name": "Big_Pool", "queues": ["gpu.xsd45.4k"]}]}}, "name"),
        ({"models": {"source": "http"}}, "source"),
        ({"externalRedis": {"url": "http://redis:6379"}}, "url"),
        ({"api": {"autoscaling": {"targetCPUUtilizationPercentage": 150}}}, "targetCPU"),
    ],
)
def test_schema_rejects_bad_values(chart, bad: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=where):
        chart.validate_schema(merged(MINIMAL, **bad))


def test_schema_accepts_the_defaults_and_the_test_value_sets(chart) -> None:
    chart.validate_schema({})
    chart.validate_schema(GPU_KEDA_MONITORING)


# -- one to one with scheduler/settings.py -------------------------------------------------


def test_config_keys_are_the_settings_the_chart_does_not_derive(chart) -> None:
    config_settings = {_snake(key) for key in chart.values["config"]}
    assert config_settings == set(Settings.model_fields) - set(DERIVED)


def test_config_defaults_are_the_process_defaults(chart) -> None:
    for key, value in chart.values["config"].items():
        name = _snake(key)
        if name in DIFFERENT_DEFAULTS:
            continue
        default = Settings.model_fields[name].default
        expected = "" if default is None else default
        assert value == (str(expected) if isinstance(expected, Path) else expected), key


def test_every_setting_reaches_the_processes(render) -> None:
    """The ConfigMap, the env block and the API's arguments together carry every XSD_*
    setting, under the names Settings reads."""
    optional = {
        "s3Bucket": "b",
        "s3EndpointUrl": "http://s3",
        "s3Prefix": "p/",
        "device": "cuda:0",
        "publicBaseUrl": "https://api.example.net",
        "spoolDir": "/data/spool",
        "warmupSizes": "1024x1024",
    }
    signer = {"s3Signing": {"accessKeyId": "AKIASIGNER", "secretAccessKey": "s"}}
    manifests = render(merged(GPU_KEDA_MONITORING, config=optional, secrets=signer))
    config = manifests.get("ConfigMap", f"{PREFIX}-config")["data"]
    (api,) = manifests.get("Deployment", f"{PREFIX}-api")["spec"]["template"]["spec"]["containers"]
    delivered = set(config) | {e["name"] for e in api["env"] if e["name"].startswith("XSD_")}
    assert {"--host", "--port"} <= set(api["command"])
    delivered |= {"XSD_HOST", "XSD_PORT"}
    assert delivered == {f"XSD_{name.upper()}" for name in Settings.model_fields}


def test_rendered_settings_parse(render) -> None:
    """What the ConfigMap says, Settings accepts (numbers as integers, booleans as words)."""
    config = render(MINIMAL).get("ConfigMap", f"{PREFIX}-config")["data"]
    settings = Settings(**{k[len("XSD_") :].lower(): v for k, v in config.items()})
    assert settings.max_body_bytes == 1_000_000
    assert settings.allow_private_urls is False
    assert settings.metrics_port == 9100
    # Probes and scrapes reach a pod on its own IP, not on the loopback XSD_HOST defaults to.
    assert settings.metrics_interface() == "0.0.0.0"


# -- values.yaml is documented key by key --------------------------------------------------


def _undocumented(lines: list[str]) -> list[str]:
    """Keys of values.yaml without a comment of their own.

    helm-docs' convention: a comment starting with ``# --`` documents a key and its whole
    value; any other key is a section, and each key inside it needs its own comment.
    """
    missing: list[str] = []
    path: list[tuple[int, str]] = []
    covered_below: int | None = None  # indentation of a "# --" documented key
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z0-9_./-]+):", line)
        if not match or line.lstrip().startswith("#"):
            continue
        indent, key = len(match.group(1)), match.group(2)
        while path and path[-1][0] >= indent:
            path.pop()
        path.append((indent, key))
        if covered_below is not None and indent > covered_below:
            continue
        covered_below = None
        above = index - 1
        comment: list[str] = []
        while above >= 0 and lines[above].strip().startswith("#"):
            comment.insert(0, lines[above].strip())
            above -= 1
        if comment and comment[0].startswith("# --"):
            covered_below = indent
        elif not _is_section(lines, index, indent):
            missing.append(".".join(k for _, k in path))
    return missing


def _is_section(lines: list[str], index: int, indent: int) -> bool:
    """A key whose value is a block of further keys."""
    if lines[index].split(":", 1)[1].strip():
        return False
    for line in lines[index + 1 :]:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        child = len(line) - len(line.lstrip())
        return child > indent and re.match(r"^\s*[A-Za-z0-9_./-]+:", line) is not None
    return False


@pytest.mark.parametrize(
    "values_file",
    [CHART / "values.yaml", CHART / "charts" / "redis" / "values.yaml"],
    ids=["xsd", "redis"],
)
def test_values_are_documented_key_by_key(values_file: Path) -> None:
    assert _undocumented(values_file.read_text().splitlines()) == []


def test_readme_examples_are_valid_values(chart) -> None:
    """The value snippets in the chart's README pass the schema and render."""
    readme = (CHART / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, flags=re.DOTALL)
    assert len(blocks) >= 2
    for block in blocks:
        values = merged(MINIMAL, **yaml.safe_load(block))
        chart.validate_schema(values)
        assert render_files(values)


def test_readme_maps_every_setting() -> None:
    readme = (CHART / "README.md").read_text()
    missing = [n for n in Settings.model_fields if f"`XSD_{n.upper()}`" not in readme]
    assert missing == []
