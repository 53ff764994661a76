"""The chart cannot be misconfigured silently: values.schema.json rejects wrong types and
unknown keys, and every object rendered in several value profiles is valid Kubernetes.

Built-in kinds are validated with ``kubernetes-validate`` (the ``test`` extra; it ships the
Kubernetes JSON schemas, so no cluster or network is needed). The custom resources the chart
renders (KEDA ScaledObject, prometheus-operator ServiceMonitor and PrometheusRule) are not in
those schemas: they are checked against the structural schemas below, written from the CRDs
for the fields the chart renders, and the HorizontalPodAutoscaler KEDA derives from the
ScaledObject is validated as a real ``autoscaling/v2`` object. Under ``CI=true`` a missing
validator or helm fails these tests instead of skipping them.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.operations.test_helm_chart import CHART, helm, helm_binary

#: Kubernetes version the built-in objects are validated against.
KUBERNETES_VERSION = "1.30"

KEDA = {
    "autoscaling": {
        "keda": {
            "enabled": True,
            "minReplicas": 2,
            "maxReplicas": 12,
            "prometheus": {
                "serverAddress": "http://prometheus-operated.monitoring.svc:9090",
                "authenticationRef": "prometheus-auth",
            },
            "lag": {"enabled": True, "recordsPerReplica": 50000},
            "fallback": {"replicas": 4},
        }
    }
}
MONITORING = {
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {
            "enabled": True,
            "labels": {"release": "kube-prometheus-stack"},
            "alertLabels": {"team": "data"},
        },
        "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Kafka"}},
    }
}
SECURITY = {
    "kafka": {
        "securityProtocol": "SASL_SSL",
        "tls": {"existingSecret": "kafka-ca", "defaultMode": 0o440},
        "sasl": {
            "mechanism": "SCRAM-SHA-512",
            "username": "archiver",
            "existingSecret": "archiver-kafka",
            "passwordAsFile": True,
        },
    },
    "serviceAccount": {"create": True, "annotations": {"example.com/role": "archiver"}},
    "podSecurityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    },
    "extraEnv": [
        {"name": "SINK_TOKEN", "valueFrom": {"secretKeyRef": {"name": "sink", "key": "token"}}}
    ],
    "extraVolumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}],
    "extraVolumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
    "volumeClaimTemplates": [
        {
            "metadata": {"name": "data"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "20Gi"}},
            },
        }
    ],
}
#: Everything at once, with a hand-driven drain while KEDA is paused.
EVERYTHING = {
    **SECURITY,
    **MONITORING,
    "autoscaling": {
        "keda": {**KEDA["autoscaling"]["keda"], "pausedReplicas": 4}  # type: ignore[index]
    },
    "drain": {"fromOrdinal": 3},
}
#: capgroup doctor as a CronJob, on a secured cluster.
DOCTOR = {
    **SECURITY,
    "doctor": {"enabled": True, "schedule": "*/30 * * * *", "args": ["--fail-on", "warn"]},
}
PROFILES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "doctor": DOCTOR,
    "keda": KEDA,
    "monitoring": MONITORING,
    "security": SECURITY,
    "everything": EVERYTHING,
}
EXPECTED_KINDS = {
    "defaults": {"Service", "StatefulSet", "PodDisruptionBudget"},
    "doctor": {"Service", "StatefulSet", "PodDisruptionBudget", "ServiceAccount", "CronJob"},
    "keda": {"Service", "StatefulSet", "PodDisruptionBudget", "ScaledObject"},
    "monitoring": {
        "Service",
        "StatefulSet",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
    },
    "security": {"Service", "StatefulSet", "PodDisruptionBudget", "ServiceAccount"},
    "everything": {
        "Service",
        "StatefulSet",
        "PodDisruptionBudget",
        "ServiceAccount",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
        "ScaledObject",
    },
}


def kubernetes_validate() -> Any:
    """The ``kubernetes_validate`` module; fails under CI when it is not installed."""
    try:
        import kubernetes_validate
    except ImportError:
        problem = "kubernetes-validate is not installed (pip install -e '.[test]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    return kubernetes_validate


def render_all(overlay: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object the chart renders with ``overlay`` on top of the required values."""
    result = helm("template", "rel", overlay=overlay)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


# ------------------------------------------------ structural schemas of the CRDs ------
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
DURATION = {"type": "string", "pattern": r"^(0|([0-9]+(\.[0-9]+)?(ms|s|m|h|d|w|y))+)$"}


def strict(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """An object schema that knows all its keys."""
    return {
        "type": "object",
        "properties": properties,
        "required": required or [],
        "additionalProperties": False,
    }


METADATA = strict(
    {"name": {"type": "string", "minLength": 1}, "labels": STRING_MAP, "annotations": STRING_MAP},
    ["name"],
)
SCALED_OBJECT = strict(
    {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": METADATA,
        "spec": strict(
            {
                "scaleTargetRef": strict(
                    {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                    },
                    ["name"],
                ),
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": strict(
                    {
                        "failureThreshold": {"type": "integer", "minimum": 1},
                        "replicas": {"type": "integer", "minimum": 0},
                    },
                    ["failureThreshold", "replicas"],
                ),
                "advanced": strict(
                    {
                        "horizontalPodAutoscalerConfig": strict(
                            # behavior is validated as part of an autoscaling/v2 HPA
                            {"name": {"type": "string"}, "behavior": {"type": "object"}}
                        ),
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                    }
                ),
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": strict(
                        {
                            "type": {"const": "prometheus"},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            # KEDA's trigger metadata is map[string]string: numbers must be quoted.
                            "metadata": {
                                **STRING_MAP,
                                "required": ["serverAddress", "query", "threshold"],
                            },
                            "authenticationRef": strict({"name": {"type": "string"}}, ["name"]),
                            "useCachedMetrics": {"type": "boolean"},
                        },
                        ["type", "metadata"],
                    ),
                },
            },
            ["scaleTargetRef", "triggers"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)
LABEL_SELECTOR = strict(
    {"matchLabels": STRING_MAP, "matchExpressions": {"type": "array"}},
)
SERVICE_MONITOR = strict(
    {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": METADATA,
        "spec": strict(
            {
                "selector": LABEL_SELECTOR,
                "endpoints": {
                    "type": "array",
                    "items": strict(
                        {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": DURATION,
                            "scrapeTimeout": DURATION,
                        },
                        ["port"],
                    ),
                },
            },
            ["selector", "endpoints"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)
PROMETHEUS_RULE = strict(
    {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": METADATA,
        "spec": strict(
            {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": strict(
                        {
                            "name": {"type": "string", "minLength": 1},
                            "interval": DURATION,
                            "rules": {
                                "type": "array",
                                "minItems": 1,
                                "items": strict(
                                    {
                                        "alert": {"type": "string", "pattern": "^[A-Za-z_]+$"},
                                        "record": {"type": "string"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": DURATION,
                                        "labels": STRING_MAP,
                                        "annotations": STRING_MAP,
                                    },
                                    ["expr"],
                                ),
                            },
                        },
                        ["name", "rules"],
                    ),
                }
            },
            ["groups"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)
CUSTOM_RESOURCES = {
    "ScaledObject": SCALED_OBJECT,
    "ServiceMonitor": SERVICE_MONITOR,
    "PrometheusRule": PROMETHEUS_RULE,
}


def hpa_of(scaled: dict[str, Any]) -> dict[str, Any]:
    """The autoscaling/v2 HorizontalPodAutoscaler KEDA creates for a ScaledObject (external
    metrics named after the triggers), so its behavior is checked by Kubernetes' schema."""
    spec = scaled["spec"]
    config = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {})
    metrics = []
    for index, trigger in enumerate(spec["triggers"]):
        kind = trigger.get("metricType", "AverageValue")
        threshold = trigger["metadata"]["threshold"]
        target = {"type": kind, "averageValue" if kind == "AverageValue" else "value": threshold}
        metrics.append(
            {
                "type": "External",
                "external": {
                    "metric": {"name": f"s{index}-prometheus"},
                    "target": target,
                },
            }
        )
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": config.get("name", f"keda-hpa-{scaled['metadata']['name']}")},
        "spec": {
            "scaleTargetRef": spec["scaleTargetRef"],
            "minReplicas": spec.get("minReplicaCount", 1),
            "maxReplicas": spec.get("maxReplicaCount", 100),
            "metrics": metrics,
            **({"behavior": config["behavior"]} if "behavior" in config else {}),
        },
    }


@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_rendered_object_is_valid_kubernetes(profile: str) -> None:
    validator = kubernetes_validate()
    import jsonschema

    objects = render_all(PROFILES[profile])
    assert {o["kind"] for o in objects} == EXPECTED_KINDS[profile]
    for obj in objects:
        kind = obj["kind"]
        if kind in CUSTOM_RESOURCES:
            # Not in kubernetes-validate's schemas (CRDs): structural schema above.
            jsonschema.validate(obj, CUSTOM_RESOURCES[kind])
            if kind == "ScaledObject":
                validator.validate(hpa_of(obj), KUBERNETES_VERSION, strict=True)
            continue
        validator.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_validation_catches_a_bad_object() -> None:
    """The validator is not vacuous: a misspelt field and a wrong type are refused."""
    validator = kubernetes_validate()
    import jsonschema

    objects = {o["kind"]: o for o in render_all(EVERYTHING)}
    statefulset = json.loads(json.dumps(objects["StatefulSet"]))
    statefulset["spec"]["replica"] = 3
    with pytest.raises(validator.ValidationError):
        validator.validate(statefulset, KUBERNETES_VERSION, strict=True)
    scaled = json.loads(json.dumps(objects["ScaledObject"]))
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, SCALED_OBJECT)
    rule = json.loads(json.dumps(objects["PrometheusRule"]))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "ten minutes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rule, PROMETHEUS_RULE)


# ------------------------------------------------------------------ the schema ------
@pytest.mark.parametrize(
    ("values", "overlay", "message"),
    [
        ({"replicas": "abc"}, None, "replicas: Invalid type. Expected: integer, given: string"),
        ({"replica": "3"}, None, "Additional property replica is not allowed"),
        ({"autoscaling.keda.maxReplica": "3"}, None, "Additional property maxReplica"),
        ({"metrics.serviceMonitor.enable": "true"}, None, "Additional property enable"),
        ({"group.sessionTimeoutMs": "soon"}, None, "group.sessionTimeoutMs: Invalid type"),
        ({"autoscaling.keda.minReplicas": "0"}, None, "autoscaling.keda.minReplicas"),
        ({"logLevel": "verbose"}, None, "logLevel must be one of"),
        ({"metrics.prometheusRule.unassignedFor": "10 minutes"}, None, "Does not match"),
        ({"capacity.weight": "0"}, None, "capacity.weight"),
        (None, {"group": {"topics": "events"}}, "group.topics: Invalid type"),
        (None, {"kafka": {"sasl": {"mechanism": "KERBEROS"}}}, "kafka.sasl.mechanism"),
        (None, {"podLabels": {"tier": 1}}, "podLabels.tier: Invalid type"),
    ],
    ids=[
        "replicas-not-an-integer",
        "misspelt-top-level-key",
        "misspelt-autoscaling-key",
        "misspelt-metrics-key",
        "timeout-not-an-integer",
        "keda-min-below-one",
        "log-level",
        "duration",
        "weight-zero",
        "topics-not-a-list",
        "mechanism",
        "label-not-a-string",
    ],
)
def test_the_schema_refuses_wrong_types_and_unknown_keys(
    values: dict[str, str] | None, overlay: dict[str, Any] | None, message: str
) -> None:
    result = helm("template", "rel", values=values, overlay=overlay)
    assert result.returncode != 0, result.stdout
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


def test_decimals_given_with_set_pass_the_schema() -> None:
    """helm --set passes 0.5 as a string: the schema accepts a decimal string there."""
    result = helm(
        "template",
        "rel",
        values={"capacity.memoryBudgetFraction": "0.5", "capacity.weight": "2.5"},
    )
    assert result.returncode == 0, result.stderr


def test_every_value_is_described_by_the_schema() -> None:
    """Each key of values.yaml (in the sections the chart owns) is a schema property, each
    section refuses unknown keys, and a key with a non-null default is required."""
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    verbatim = {"resources"}  # Kubernetes resources: only limits/requests/claims, not all given
    nullable = {"kafka.tls.caKey"}  # documented "null: no CA file"

    def walk(node: dict[str, Any], vals: dict[str, Any], path: str) -> None:
        assert node.get("additionalProperties") is False, f"{path or 'top level'} is open"
        assert set(vals) <= set(node["properties"]), path
        for key, value in vals.items():
            if (
                value is not None
                and path.strip(".") not in verbatim
                and f"{path}{key}" not in nullable
            ):
                assert key in node.get("required", []), f"{path}{key} is not required"
            sub = node["properties"][key]
            if isinstance(value, dict) and sub.get("additionalProperties") is False:
                walk(sub, value, f"{path}{key}.")

    walk(schema, values, "")
    closed = {
        key for key, sub in schema["properties"].items() if sub.get("additionalProperties") is False
    }
    assert {
        "image",
        "app",
        "kafka",
        "group",
        "capacity",
        "batch",
        "fetch",
        "shutdown",
        "drain",
        "autoscaling",
        "http",
        "probes",
        "metrics",
        "podDisruptionBudget",
        "serviceAccount",
    } <= closed


# ------------------------------------------------------------- autoscaling ------
def by_kind(overlay: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in render_all(overlay)}


def test_keda_scaled_object_follows_replicas_wanted_and_scales_down_slowly() -> None:
    objects = by_kind(KEDA)
    statefulset, scaled = objects["StatefulSet"], objects["ScaledObject"]
    # KEDA owns the replica count: a helm upgrade must not reset it.
    assert "replicas" not in statefulset["spec"]
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": statefulset["metadata"]["name"],
    }
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 12)
    assert spec["fallback"] == {"failureThreshold": 3, "replicas": 4}
    wanted, lag = spec["triggers"]
    assert wanted["name"] == "replicas-wanted"
    # AverageValue with threshold 1: desired replicas = ceil(figure / 1), independent of the
    # current count (Value would multiply the current count by the figure).
    assert wanted["metricType"] == "AverageValue"
    assert wanted["metadata"] == {
        "serverAddress": "http://prometheus-operated.monitoring.svc:9090",
        "query": 'max(capgroup_group_replicas_wanted{group="archiver"})',
        "threshold": "1",
        "ignoreNullValues": "false",
    }
    assert wanted["authenticationRef"] == {"name": "prometheus-auth"}
    assert lag["metricType"] == "AverageValue"
    assert lag["metadata"]["query"] == (
        'sum(max by (topic, partition) (capgroup_partition_lag_records{group="archiver"}))'
    )
    assert lag["metadata"]["threshold"] == "50000"
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 600
    assert behavior["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 60
    assert "annotations" not in scaled["metadata"]
    # Without KEDA the StatefulSet keeps its replicas and no ScaledObject is rendered.
    plain = by_kind({})
    assert plain["StatefulSet"]["spec"]["replicas"] == 3
    assert "ScaledObject" not in plain


def test_a_paused_scaled_object_pins_the_replicas_for_a_drain() -> None:
    objects = by_kind(EVERYTHING)
    annotations = objects["ScaledObject"]["metadata"]["annotations"]
    assert annotations == {"autoscaling.keda.sh/paused-replicas": "4"}
    (main,) = objects["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["DRAIN_FROM_ORDINAL"] == "3"


def test_a_custom_query_replaces_the_chart_query() -> None:
    query = 'max(capgroup_group_replicas_wanted{group="archiver",namespace="prod"})'
    overlay = {
        "autoscaling": {
            "keda": {
                "enabled": True,
                "prometheus": {"serverAddress": "http://prom:9090", "query": query},
            }
        }
    }
    scaled = by_kind(overlay)["ScaledObject"]
    assert scaled["spec"]["triggers"][0]["metadata"]["query"] == query
    assert len(scaled["spec"]["triggers"]) == 1


KEDA_ON = {"enabled": True, "prometheus": {"serverAddress": "http://prom:9090"}}


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        (
            {"autoscaling": {"keda": {"enabled": True}}},
            "autoscaling.keda.prometheus.serverAddress is required",
        ),
        (
            {"autoscaling": {"keda": {**KEDA_ON, "minReplicas": 5, "maxReplicas": 3}}},
            "autoscaling.keda.minReplicas (5) is above autoscaling.keda.maxReplicas (3)",
        ),
        (
            {"autoscaling": {"keda": {**KEDA_ON, "scaleDown": {"periodSeconds": 30}}}},
            "autoscaling.keda.scaleDown.periodSeconds (30) must be longer than "
            "group.sessionTimeoutMs",
        ),
        (
            {"autoscaling": {"keda": KEDA_ON}, "drain": {"fromOrdinal": 2}},
            "drain.fromOrdinal with autoscaling.keda.enabled needs autoscaling.keda.pausedReplicas",
        ),
        (
            {"autoscaling": {"keda": {**KEDA_ON, "fallback": {"replicas": 50}}}},
            "autoscaling.keda.fallback.replicas (50) must be within",
        ),
        (
            {"autoscaling": {"keda": {**KEDA_ON, "prometheus": {"serverAddress": "prom:9090"}}}},
            "autoscaling.keda.prometheus.serverAddress: Does not match pattern",
        ),
    ],
    ids=["no-server", "min-above-max", "thrashing-period", "drain-unpaused", "fallback", "url"],
)
def test_autoscaling_values_that_would_misbehave_fail_the_render(
    overlay: dict[str, Any], message: str
) -> None:
    result = helm("template", "rel", overlay=overlay)
    assert result.returncode != 0, result.stdout
    assert message in result.stderr, result.stderr


# ------------------------------------------------------------------- doctor ------
def test_the_doctor_cron_job_checks_the_group_with_the_connection_settings() -> None:
    objects = by_kind(DOCTOR)
    job = objects["CronJob"]
    assert job["spec"]["schedule"] == "*/30 * * * *"
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (doctor,) = pod["containers"]
    assert doctor["command"] == [
        *("capgroup", "doctor", "--group", "archiver"),
        *("--topic", "events", "--topic", "audit", "--fail-on", "warn"),
    ]
    env = {e["name"]: e for e in doctor["env"]}
    assert env["CAPGROUP_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert {"CAPGROUP_SASL_PASSWORD_FILE", "CAPGROUP_SSL_CAFILE"} <= set(env)
    assert {v["name"] for v in pod["volumes"]} == {"kafka-tls", "kafka-sasl"}
    assert pod["restartPolicy"] == "Never"
    assert "CronJob" not in by_kind({})


# ------------------------------------------------------------------- alerts ------
def test_the_prometheus_rule_has_the_issue_12_alerts_with_the_thresholds() -> None:
    overlay = {
        "metrics": {
            "prometheusRule": {
                "enabled": True,
                "unassignedFor": "15m",
                "retentionMarginSeconds": 7200,
                "alertLabels": {"team": "data"},
            }
        }
    }
    rule = by_kind(overlay)["PrometheusRule"]
    rules = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert set(rules) == {
        "CapgroupPartitionsUnassigned",
        "CapgroupRetentionMarginLow",
        "CapgroupRecordsDeletedUnconsumed",
        "CapgroupMemberUnhealthy",
        "CapgroupPartitionsStopped",
    }
    unassigned = rules["CapgroupPartitionsUnassigned"]
    assert unassigned["expr"] == (
        'max by (group) (capgroup_group_unassigned_partitions{group="archiver"}) > 0'
    )
    assert unassigned["for"] == "15m"
    assert unassigned["labels"] == {"severity": "warning", "team": "data"}
    assert rules["CapgroupRetentionMarginLow"]["expr"].endswith("< 7200")
    assert (
        "increase(capgroup_records_deleted_unconsumed_total"
        in (rules["CapgroupRecordsDeletedUnconsumed"]["expr"])
    )
    assert rules["CapgroupRecordsDeletedUnconsumed"]["labels"]["severity"] == "critical"
    assert rules["CapgroupMemberUnhealthy"]["expr"].endswith("== 0")
    # Group figures are read with max by (group): every member exports the same value.
    for alert in rules.values():
        if "capgroup_group_" in alert["expr"]:
            assert alert["expr"].startswith("max by (group) ("), alert["expr"]
    # With KEDA, an alert for a group that wants more than maxReplicas.
    capped = by_kind({**overlay, **KEDA})["PrometheusRule"]
    names = [r["alert"] for r in capped["spec"]["groups"][0]["rules"]]
    assert "CapgroupReplicasCapped" in names


def test_the_dashboard_config_map_carries_the_dashboard_json() -> None:
    config_map = by_kind(MONITORING)["ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Kafka"}
    shipped = json.loads(config_map["data"]["capgroup.json"])
    assert shipped == json.loads(
        (CHART / "dashboards" / "capgroup.json").read_text(encoding="utf-8")
    )


def test_the_chart_package_ships_the_dashboard_and_the_schema(tmp_path: Path) -> None:
    result = subprocess.run(
        [helm_binary(), "package", str(CHART), "--destination", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (archive,) = tmp_path.glob("capgroup-*.tgz")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"capgroup/values.schema.json", "capgroup/dashboards/capgroup.json"} <= names


@pytest.mark.parametrize("profile", list(PROFILES))
def test_helm_lint_passes_in_every_profile(profile: str) -> None:
    """Lint also renders NOTES.txt, which differs with autoscaling."""
    result = helm("lint", "--strict", overlay=PROFILES[profile])
    assert result.returncode == 0, result.stdout + result.stderr
