"""What the rendered workloads promise: commands, GPUs, scaling, rollouts, Redis, secrets."""

from __future__ import annotations

import re
import shlex

import pytest

from scheduler.stages.celery_app import gpu_queues

from .conftest import (
    EXTERNAL,
    GPU_KEDA_MONITORING,
    MINIMAL,
    PREFIX,
    RELEASE,
    VALUE_SETS,
    container,
    env_names,
    env_value,
    helm,
    merged,
    render_files,
)

GPU_POOLS = {f"{PREFIX}-gpu-2k": ["gpu.xsd45.2k"], f"{PREFIX}-gpu-4k": ["gpu.xsd45.4k"]}


# -- commands and ports (the operational contract) ----------------------------------------


def test_containers_run_the_xsd_commands(render) -> None:
    manifests = render(MINIMAL)
    commands = {
        name: container(manifests.get("Deployment", name))["command"]
        for name in manifests.names("Deployment")
    }
    assert commands == {
        f"{PREFIX}-api": ["xsd", "api", "--host", "0.0.0.0", "--port", "8000"],
        f"{PREFIX}-cpu-worker": [
            "xsd",
            "worker",
            "--queues",
            "cpu",
            "--hostname",
            "cpu@$(POD_NAME)",
        ],
        f"{PREFIX}-gpu-2k": [
            "xsd",
            "worker",
            "--queues",
            "gpu.xsd45.2k",
            "--hostname",
            "gpu@$(POD_NAME)",
        ],
        f"{PREFIX}-gpu-4k": [
            "xsd",
            "worker",
            "--queues",
            "gpu.xsd45.4k",
            "--hostname",
            "gpu@$(POD_NAME)",
        ],
        f"{PREFIX}-beat": ["xsd", "beat"],
    }


def test_default_pools_consume_exactly_the_queues_the_code_routes_to(chart) -> None:
    pools = chart.values["gpuWorkers"]["pools"]
    assert sorted(q for pool in pools for q in pool["queues"]) == sorted(gpu_queues(["xSD4.5"]))


def test_api_probes_and_port(render) -> None:
    api = container(render(MINIMAL).get("Deployment", f"{PREFIX}-api"))
    assert api["ports"] == [{"name": "http", "containerPort": 8000}]
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_workers_and_beat_serve_metrics_and_probes(render) -> None:
    manifests = render(MINIMAL)
    for name in manifests.names("Deployment") - {f"{PREFIX}-api"}:
        c = container(manifests.get("Deployment", name))
        assert c["ports"] == [{"name": "metrics", "containerPort": 9100}], name
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}, name
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}, name
        assert {"configMapRef": {"name": f"{PREFIX}-config"}} in c["envFrom"], name
    config = manifests.get("ConfigMap", f"{PREFIX}-config")["data"]
    assert config["XSD_METRICS_PORT"] == "9100"
    # On every interface: the process default (where the API binds, loopback) would leave
    # the probes above unanswered.
    assert config["XSD_METRICS_HOST"] == "0.0.0.0"


def test_pre_stop_drains_the_worker_by_its_own_hostname(render) -> None:
    """Kubernetes expands $(POD_NAME) in the command but not in lifecycle hooks, so the hook
    runs through a shell; both must name the same Celery node."""
    manifests = render(MINIMAL)
    for name in (f"{PREFIX}-cpu-worker", *GPU_POOLS):
        c = container(manifests.get("Deployment", name))
        hostname = c["command"][c["command"].index("--hostname") + 1]
        shell, flag, script = c["lifecycle"]["preStop"]["exec"]["command"]
        assert (shell, flag) == ("sh", "-c")
        argv = shlex.split(script)
        assert argv[:4] == ["exec", "xsd", "drain", "--hostname"]
        assert argv[4].replace("${POD_NAME}", "$(POD_NAME)") == hostname


# -- GPU pools -----------------------------------------------------------------------------


def test_gpu_pools_request_a_gpu_and_tolerate_gpu_nodes(render) -> None:
    manifests = render(MINIMAL)
    for name in GPU_POOLS:
        pod = manifests.get("Deployment", name)["spec"]["template"]["spec"]
        c = container(manifests.get("Deployment", name))
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]
        assert c["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        startup = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
        assert startup >= 600, "model loading needs minutes"
        assert pod["terminationGracePeriodSeconds"] >= 600
        # Nothing is rendered for scheduling knobs nobody set.
        assert "nodeSelector" not in pod and "affinity" not in pod


def test_a_pool_overrides_the_defaults(render) -> None:
    manifests = render(
        merged(
            MINIMAL,
            gpuWorkers={
                "pools": [
                    {
                        "name": "big",
                        "queues": ["gpu.xsd45.4k"],
                        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                        "resources": {"limits": {"memory": "96Gi"}},
                    }
                ]
            },
        )
    )
    pod = manifests.get("Deployment", f"{PREFIX}-gpu-big")["spec"]["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits == {"memory": "96Gi", "nvidia.com/gpu": 1}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_weights_from_a_claim_are_mounted_read_only(render) -> None:
    manifests = render(GPU_KEDA_MONITORING)
    for name in GPU_POOLS:
        pod = manifests.get("Deployment", name)["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == "models")
        assert volume["persistentVolumeClaim"] == {"claimName": "sdxl-weights", "readOnly": True}
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "models")
        assert mount == {"name": "models", "mountPath": "/models", "readOnly": True}
    config = manifests.get("ConfigMap", f"{PREFIX}-config")["data"]
    assert config["XSD_MODEL_PATH"] == "/models/xsd45"
    # Only GPU pods mount the weights.
    api = manifests.get("Deployment", f"{PREFIX}-api")["spec"]["template"]["spec"]
    assert all(v["name"] != "models" for v in api["volumes"])


def test_weights_from_s3_are_copied_by_an_init_container(render) -> None:
    manifests = render(EXTERNAL)
    for name in GPU_POOLS:
        pod = manifests.get("Deployment", name)["spec"]["template"]["spec"]
        (init,) = pod["initContainers"]
        assert init["image"].startswith("amazon/aws-cli:")
        assert init["command"][:3] == ["aws", "s3", "sync"]
        assert init["command"][-2:] == ["s3://xsd-models/sdxl/", "/models/xsd45"]
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env_names(init))
        volume = next(v for v in pod["volumes"] if v["name"] == "models")
        assert "emptyDir" in volume


# -- scaling -------------------------------------------------------------------------------


def test_keda_scales_each_pool_on_its_queue_lists(render) -> None:
    manifests = render(GPU_KEDA_MONITORING)
    scaled = {o["metadata"]["name"]: o for o in manifests.of_kind("ScaledObject")}
    assert set(scaled) == {*GPU_POOLS, f"{PREFIX}-cpu-worker"}
    for name, queues in {**GPU_POOLS, f"{PREFIX}-cpu-worker": ["cpu"]}.items():
        spec = scaled[name]["spec"]
        assert spec["scaleTargetRef"]["name"] == name
        assert [t["metadata"]["listName"] for t in spec["triggers"]] == queues
        for trigger in spec["triggers"]:
            assert trigger["type"] == "redis"
            assert trigger["metadata"]["address"] == f"{RELEASE}-redis.xsd.svc:6379"
            assert trigger["metadata"]["passwordFromEnv"] == "REDIS_PASSWORD"
        # The env var KEDA reads the password from exists in the scaled container.
        assert "REDIS_PASSWORD" in env_names(container(manifests.get("Deployment", name)))
    assert scaled[f"{PREFIX}-gpu-2k"]["spec"]["triggers"][0]["metadata"]["listLength"] == "8"
    assert scaled[f"{PREFIX}-gpu-2k"]["spec"]["minReplicaCount"] == 0


def test_keda_uses_the_external_redis_address_and_tls(render) -> None:
    manifests = render(EXTERNAL)
    for scaled in manifests.of_kind("ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            meta = trigger["metadata"]
            assert meta["address"] == "master.xsd.abc123.use1.cache.amazonaws.com:6380"
            assert meta["enableTLS"] == "true"
            assert meta["databaseIndex"] == "2"


def test_no_hpa_and_no_replicas_where_keda_scales(render) -> None:
    manifests = render(GPU_KEDA_MONITORING)
    keda_targets = {o["spec"]["scaleTargetRef"]["name"] for o in manifests.of_kind("ScaledObject")}
    hpa_targets = {
        o["spec"]["scaleTargetRef"]["name"] for o in manifests.of_kind("HorizontalPodAutoscaler")
    }
    # cpuWorker.autoscaling.enabled is true in this value set, and KEDA still wins.
    assert keda_targets.isdisjoint(hpa_targets)
    assert hpa_targets == {f"{PREFIX}-api"}
    for name in keda_targets | hpa_targets:
        assert "replicas" not in manifests.get("Deployment", name)["spec"], name


def test_api_hpa_is_autoscaling_v2(render) -> None:
    (hpa,) = render(MINIMAL).of_kind("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_beat_is_a_single_recreated_replica(render) -> None:
    for values in VALUE_SETS.values():
        beat = render(values).get("Deployment", f"{PREFIX}-beat")
        assert beat["spec"]["replicas"] == 1
        assert beat["spec"]["strategy"] == {"type": "Recreate"}


def test_disruption_budgets_cover_api_and_workers_but_not_the_beat(render) -> None:
    manifests = render(MINIMAL)
    budgets = manifests.names("PodDisruptionBudget")
    assert budgets == {f"{PREFIX}-api", f"{PREFIX}-cpu-worker", *GPU_POOLS}
    for pdb in manifests.of_kind("PodDisruptionBudget"):
        target = manifests.get("Deployment", pdb["metadata"]["name"])
        assert pdb["spec"]["selector"]["matchLabels"] == target["spec"]["selector"]["matchLabels"]


# -- configuration rollouts ----------------------------------------------------------------


def _checksums(manifests, name: str) -> dict[str, str]:
    annotations = manifests.get("Deployment", name)["spec"]["template"]["metadata"]["annotations"]
    return {k: v for k, v in annotations.items() if k.startswith("checksum/")}


def test_checksums_change_with_config_and_secrets_only(render) -> None:
    base = _checksums(render(MINIMAL), f"{PREFIX}-gpu-2k")
    assert set(base) == {"checksum/config", "checksum/secret"}
    assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in base.values())
    # Same values, same checksums: no needless rollouts.
    assert _checksums(render(MINIMAL), f"{PREFIX}-gpu-2k") == base

    config = _checksums(
        render(merged(MINIMAL, config={"rateLimitPerMinute": 600})), f"{PREFIX}-gpu-2k"
    )
    assert config["checksum/config"] != base["checksum/config"]
    assert config["checksum/secret"] == base["checksum/secret"]

    secret = _checksums(
        render(merged(MINIMAL, secrets={"apiKeyPepper": {"value": "another-pepper"}})),
        f"{PREFIX}-gpu-2k",
    )
    assert secret["checksum/secret"] != base["checksum/secret"]
    assert secret["checksum/config"] == base["checksum/config"]

    redis = _checksums(
        render(merged(MINIMAL, redis={"auth": {"password": "rotated1"}})), f"{PREFIX}-gpu-2k"
    )
    assert redis["checksum/secret"] != base["checksum/secret"]


def test_every_xsd_pod_carries_the_checksums(render) -> None:
    manifests = render(MINIMAL)
    for name in manifests.names("Deployment"):
        assert set(_checksums(manifests, name)) == {"checksum/config", "checksum/secret"}, name


# -- Redis ---------------------------------------------------------------------------------


# redis.conf's and Kubernetes' binary units.
_UNITS = {"mb": 2**20, "gb": 2**30, "Mi": 2**20, "Gi": 2**30}


def _bytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]+)", size).groups()
    return int(number) * _UNITS[unit]


def test_in_chart_redis(render) -> None:
    manifests = render(MINIMAL)
    redis = manifests.get("StatefulSet", f"{RELEASE}-redis")
    args = container(redis)["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    password = env_value(container(redis), "REDIS_PASSWORD")["valueFrom"]["secretKeyRef"]
    assert password == {"name": f"{RELEASE}-redis", "key": "redis-password"}
    assert manifests.get("Secret", f"{RELEASE}-redis")["data"]["redis-password"]
    # Full, Redis must refuse writes before the kernel kills it: maxmemory leaves room
    # under the limit for the copy-on-write pages of an AOF rewrite.
    limit = container(redis)["resources"]["limits"]["memory"]
    assert _bytes(args[args.index("--maxmemory") + 1]) <= 0.8 * _bytes(limit)
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert manifests.get("Service", f"{RELEASE}-redis")["spec"]["ports"][0]["port"] == 6379

    api = container(manifests.get("Deployment", f"{PREFIX}-api"))
    names = env_names(api)
    assert names.index("REDIS_PASSWORD") < names.index("XSD_REDIS_URL")
    assert env_value(api, "XSD_REDIS_URL")["value"] == (
        f"redis://:$(REDIS_PASSWORD)@{RELEASE}-redis:6379/0"
    )
    assert env_value(api, "REDIS_PASSWORD")["valueFrom"]["secretKeyRef"] == password


def test_external_redis(render) -> None:
    manifests = render(EXTERNAL)
    assert not manifests.of_kind("StatefulSet")
    assert f"{RELEASE}-redis" not in manifests.names("Service")
    api = container(manifests.get("Deployment", f"{PREFIX}-api"))
    assert env_value(api, "XSD_REDIS_URL")["value"] == (
        "rediss://:$(REDIS_PASSWORD)@master.xsd.abc123.use1.cache.amazonaws.com:6380/2"
    )
    assert env_value(api, "REDIS_PASSWORD")["valueFrom"]["secretKeyRef"] == {
        "name": "xsd-redis",
        "key": "redis-password",
    }


def test_external_redis_password_from_values_lands_in_the_chart_secret(render) -> None:
    values = merged(EXTERNAL, externalRedis={"existingSecret": "", "password": "s3cret"})
    manifests = render(values)
    api = container(manifests.get("Deployment", f"{PREFIX}-api"))
    ref = env_value(api, "REDIS_PASSWORD")["valueFrom"]["secretKeyRef"]
    assert ref == {"name": PREFIX, "key": "redis-password"}
    assert ref["key"] in manifests.get("Secret", PREFIX)["data"]


def test_external_redis_without_password(render) -> None:
    values = merged(EXTERNAL, externalRedis={"existingSecret": "", "url": "redis://redis:6379"})
    manifests = render(values)
    api = container(manifests.get("Deployment", f"{PREFIX}-api"))
    assert "REDIS_PASSWORD" not in env_names(api)
    assert env_value(api, "XSD_REDIS_URL")["value"] == "redis://redis:6379/0"
    for scaled in manifests.of_kind("ScaledObject"):
        assert "passwordFromEnv" not in scaled["spec"]["triggers"][0]["metadata"]


def test_external_redis_url_must_not_carry_a_password() -> None:
    values = merged(EXTERNAL, externalRedis={"url": "redis://:hunter2@redis:6379/0"})
    with pytest.raises(helm.HelmError, match="must not carry credentials"):
        render_files(values)


# -- secrets -------------------------------------------------------------------------------


def test_secrets_are_required() -> None:
    values = merged(MINIMAL)
    del values["secrets"]["apiKeyPepper"]
    with pytest.raises(helm.HelmError, match="secrets.apiKeyPepper.value is required"):
        render_files(values)


def test_chart_secret_holds_given_values(render) -> None:
    values = merged(
        MINIMAL, secrets={"s3": {"accessKeyId": "AKIAEXAMPLE", "secretAccessKey": "abc/def"}}
    )
    manifests = render(values)
    secret = manifests.get("Secret", PREFIX)
    assert set(secret["data"]) == {
        "api-key-pepper",
        "url-signing-key",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }
    api = container(manifests.get("Deployment", f"{PREFIX}-api"))
    for name, key in [
        ("XSD_API_KEY_PEPPER", "api-key-pepper"),
        ("XSD_URL_SIGNING_KEY", "url-signing-key"),
        ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
        ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
    ]:
        assert env_value(api, name)["valueFrom"]["secretKeyRef"] == {"name": PREFIX, "key": key}


def test_existing_secrets_replace_the_chart_secret(render) -> None:
    manifests = render(EXTERNAL)
    assert PREFIX not in manifests.names("Secret")
    api = container(manifests.get("Deployment", f"{PREFIX}-api"))
    refs = {
        name: env_value(api, name)["valueFrom"]["secretKeyRef"]
        for name in ("XSD_API_KEY_PEPPER", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    assert refs == {
        "XSD_API_KEY_PEPPER": {"name": "xsd-keys", "key": "api-key-pepper"},
        "AWS_ACCESS_KEY_ID": {"name": "xsd-s3-signer", "key": "AWS_ACCESS_KEY_ID"},
        "AWS_SECRET_ACCESS_KEY": {"name": "xsd-s3-signer", "key": "AWS_SECRET_ACCESS_KEY"},
    }


def test_url_signing_key_only_with_local_storage(render) -> None:
    """S3 presigns its own URLs: the local store's signing key is then neither required nor
    given to any pod. With local storage it is required, from a value or a Secret."""
    for workload in render(EXTERNAL).workloads():
        assert "XSD_URL_SIGNING_KEY" not in env_names(container(workload))

    values = merged(MINIMAL)
    del values["secrets"]["urlSigningKey"]
    with pytest.raises(helm.HelmError, match="secrets.urlSigningKey.value is required"):
        render_files(values)

    existing = {"urlSigningKey": {"value": "", "existingSecret": "xsd-keys"}}
    manifests = render(merged(MINIMAL, secrets=existing))
    assert set(manifests.get("Secret", PREFIX)["data"]) == {"api-key-pepper"}
    api = container(manifests.get("Deployment", f"{PREFIX}-api"))
    assert env_value(api, "XSD_URL_SIGNING_KEY")["valueFrom"]["secretKeyRef"] == {
        "name": "xsd-keys",
        "key": "url-signing-key",
    }


@pytest.mark.parametrize(
    "credentials, warned",
    [
        ({}, True),
        ({"s3Signing": {"existingSecret": "xsd-s3-signer"}}, False),
        ({"s3": {"existingSecret": "xsd-s3"}}, False),
    ],
    ids=["irsa-only", "signing-key", "static-key"],
)
def test_notes_warn_when_urls_would_die_with_sts_credentials(credentials, warned) -> None:
    values = merged(EXTERNAL, secrets={"s3": {"existingSecret": ""}, **credentials})
    (notes,) = [text for name, text in render_files(values).items() if name.endswith("NOTES.txt")]
    assert ("expire after\nabout an hour" in notes) is warned


def test_no_aws_keys_without_s3_credentials(render) -> None:
    api = container(render(MINIMAL).get("Deployment", f"{PREFIX}-api"))
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env_names(api))


# -- pods ----------------------------------------------------------------------------------


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_pods_run_as_non_root_on_a_read_only_root(render, values_name: str) -> None:
    for workload in render(VALUE_SETS[values_name]).workloads():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"] + pod.get("initContainers", []):
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_xsd_pods_have_writable_tmp_and_data_dir(render) -> None:
    manifests = render(MINIMAL)
    for name in manifests.names("Deployment"):
        mounts = {
            m["mountPath"]: m["name"]
            for m in container(manifests.get("Deployment", name))["volumeMounts"]
        }
        assert mounts["/tmp"] == "tmp" and mounts["/var/lib/xsd"] == "data", name
        # Local storage: every pod shares one ReadWriteMany claim for the objects.
        assert mounts["/var/lib/xsd/objects"] == "objects", name
    claim = manifests.get("PersistentVolumeClaim", f"{PREFIX}-objects")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_optional_objects_are_off_by_default(render) -> None:
    manifests = render(MINIMAL)
    for kind in ("ScaledObject", "ServiceMonitor"):
        assert not manifests.of_kind(kind)
    assert f"{PREFIX}-dashboard" not in manifests.names("ConfigMap")
    assert not [s for s in manifests.names("Service") if s.endswith("-metrics")]


def test_service_monitors_cover_the_api_and_every_worker(render) -> None:
    manifests = render(GPU_KEDA_MONITORING)
    monitors = {m["metadata"]["name"]: m for m in manifests.of_kind("ServiceMonitor")}
    api = monitors[f"{PREFIX}-api"]
    assert api["spec"]["endpoints"][0]["port"] == "http"
    assert api["spec"]["endpoints"][0]["path"] == "/metrics"
    assert api["metadata"]["labels"]["release"] == "prom"
    workers = monitors[f"{PREFIX}-workers"]
    assert workers["spec"]["endpoints"][0]["port"] == "metrics"
    (expression,) = workers["spec"]["selector"]["matchExpressions"]
    # Every worker Deployment and the beat have a headless Service the selector matches.
    for name in manifests.names("Deployment") - {f"{PREFIX}-api"}:
        service = manifests.get("Service", f"{name}-metrics")
        labels = service["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] in expression["values"]
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["ports"] == [
            {"name": "metrics", "port": 9100, "targetPort": "metrics"}
        ]
