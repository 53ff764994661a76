"""The Helm chart in deploy/helm/capgroup.

Without helm: chart metadata and values are well-formed YAML, every ``CAPGROUP_*`` variable
the templates set is a real setting, and every value the templates read exists in
values.yaml. With helm (on PATH, or named by ``$HELM``): ``helm lint``, rendered manifests
checked value by value, the rendered environment loaded by ``CapgroupSettings`` itself, and
the renders that must fail.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from capgroup import CapgroupSettings, load_settings

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "capgroup"
TEMPLATES = sorted((CHART / "templates").glob("*"))

#: Variables the templates set for the container's shell, not capgroup settings.
NOT_SETTINGS = {"POD_NAME", "DRAIN_FROM_ORDINAL"}

#: The values every install must give, as a values file would (helm's --set splits on commas).
REQUIRED: dict[str, Any] = {
    "image": {"repository": "registry.example/archiver"},
    "app": {"target": "myservice.archive:Archiver"},
    "kafka": {"bootstrapServers": "kafka-0.kafka:9092,kafka-1.kafka:9092"},
    "group": {"id": "archiver", "topics": ["events", "audit"]},
}


def template_text() -> str:
    """All templates, concatenated."""
    return "\n".join(path.read_text(encoding="utf-8") for path in TEMPLATES)


def test_chart_metadata_and_values_are_well_formed() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "capgroup"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert isinstance(values, dict)
    assert values["group"]["staticMembership"] is True
    assert values["resources"]["limits"]["memory"]


def test_every_capgroup_variable_in_the_templates_is_a_setting() -> None:
    named = set(re.findall(r"\b(CAPGROUP_[A-Z0-9_]+)\b", template_text()))
    settings = {f"CAPGROUP_{name.upper()}" for name in CapgroupSettings.model_fields}
    assert named, "the templates set no CAPGROUP_* variable"
    assert named - settings == set()
    # The ones the design promises are there.
    assert {
        "CAPGROUP_GROUP_INSTANCE_ID",
        "CAPGROUP_CONTAINER_MEMORY_LIMIT_BYTES",
        "CAPGROUP_SHUTDOWN_TIMEOUT_MS",
        "CAPGROUP_HTTP_PORT",
        "CAPGROUP_HTTP_HOST",
        "CAPGROUP_MAX_PARTITIONS",
        "CAPGROUP_MEMORY_BUDGET_FRACTION",
        "CAPGROUP_MEMORY_BUDGET_BYTES",
        "CAPGROUP_WEIGHT",
        "CAPGROUP_DRAINING",
    } <= named


def test_every_value_the_templates_read_exists_in_values_yaml() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    text = template_text()
    paths = set(re.findall(r"(?:\.Values|\$v)((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", text))
    assert paths
    missing = []
    for path in sorted(paths):
        node: Any = values
        for key in path.strip(".").split("."):
            if not isinstance(node, dict) or key not in node:
                missing.append(path)
                break
            node = node[key]
    assert missing == []


# ---------------------------------------------------------------------- with helm ------
#: The helm release the chart is checked with; built from its Go module when not installed.
HELM_MODULE = "helm.sh/helm/v3/cmd/helm@v3.16.4"
HELM_CACHE = (
    Path(os.environ.get("CAPGROUP_TOOLS_CACHE", Path.home() / ".cache" / "capgroup")) / "bin"
)


@functools.cache
def helm_binary() -> str:
    """``$HELM``, helm on the PATH, or helm built once with ``go install`` into the cache.

    The chart tests never skip for want of helm under CI: a machine with Go builds it (about
    a minute or two the first time, cached afterwards)."""
    found = os.environ.get("HELM") or shutil.which("helm")
    cached = HELM_CACHE / "helm"
    if found:
        return found
    if cached.is_file():
        return str(cached)
    go = shutil.which("go")
    problem = "helm is not installed and Go is not available to build it"
    if go is not None:
        HELM_CACHE.mkdir(parents=True, exist_ok=True)
        built = subprocess.run(
            [go, "install", HELM_MODULE],
            env={**os.environ, "GOBIN": str(HELM_CACHE)},
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if built.returncode == 0 and cached.is_file():
            return str(cached)
        problem = f"go install {HELM_MODULE} failed: {built.stderr[-2000:]}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(problem)
    pytest.skip(problem)


def helm(
    *args: str, values: dict[str, str] | None = None, overlay: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run helm on the chart with ``REQUIRED`` as a values file, then ``overlay`` as a second
    values file (for lists and maps), then ``values`` as --set."""
    binary = helm_binary()
    with tempfile.TemporaryDirectory() as scratch:
        required = Path(scratch) / "required.yaml"
        required.write_text(yaml.safe_dump(REQUIRED), encoding="utf-8")
        files = ["-f", str(required)]
        if overlay is not None:
            extra = Path(scratch) / "overlay.yaml"
            extra.write_text(yaml.safe_dump(overlay), encoding="utf-8")
            files += ["-f", str(extra)]
        sets = [f"--set={key}={value}" for key, value in (values or {}).items()]
        return subprocess.run(
            [binary, *args, str(CHART), *files, *sets],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def render(
    values: dict[str, str] | None = None, overlay: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Rendered manifests by kind."""
    result = helm("template", "rel", values=values, overlay=overlay)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), "one object of each kind"
    return by_kind


def container(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The consumer container of the StatefulSet."""
    pod = manifests["StatefulSet"]["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["consumer"]
    return dict(pod["containers"][0])


def env_of(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The container's env as ``{name: value or valueFrom}``."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(manifests)["env"]}


def test_helm_lint_passes() -> None:
    result = helm("lint", "--strict")
    assert result.returncode == 0, result.stdout + result.stderr


def test_values_become_the_documented_environment() -> None:
    manifests = render(
        {
            "capacity.maxPartitions": "12",
            "capacity.memoryBudgetFraction": "0.5",
            "capacity.weight": "2.5",
            "capacity.rack": "zone-a",
            "batch.maxRecords": "500",
            "batch.maxBytes": "4194304",
            "batch.maxAgeMs": "15000",
            "batch.flushConcurrency": "8",
            "fetch.maxPartitionFetchBytes": "524288",
            "group.sessionTimeoutMs": "45000",
            "shutdown.timeoutMs": "20000",
            "http.port": "9200",
            "resources.limits.memory": "2Gi",
        }
    )
    env = env_of(manifests)
    assert env["CAPGROUP_GROUP_INSTANCE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["CAPGROUP_CONTAINER_MEMORY_LIMIT_BYTES"] == {
        "resourceFieldRef": {
            "containerName": "consumer",
            "resource": "limits.memory",
            "divisor": "1",
        }
    }
    literal = {k: v for k, v in env.items() if isinstance(v, str)}
    assert literal == {
        "CAPGROUP_BOOTSTRAP_SERVERS": "kafka-0.kafka:9092,kafka-1.kafka:9092",
        "CAPGROUP_GROUP_ID": "archiver",
        "CAPGROUP_TOPICS": "events,audit",
        "CAPGROUP_SESSION_TIMEOUT_MS": "45000",
        "CAPGROUP_HEARTBEAT_INTERVAL_MS": "3000",
        "CAPGROUP_REBALANCE_TIMEOUT_MS": "30000",
        "CAPGROUP_MAX_PARTITIONS": "12",
        "CAPGROUP_MEMORY_BUDGET_FRACTION": "0.5",
        "CAPGROUP_WEIGHT": "2.5",
        "CAPGROUP_RACK": "zone-a",
        "CAPGROUP_BATCH_MAX_RECORDS": "500",
        "CAPGROUP_BATCH_MAX_BYTES": "4194304",
        "CAPGROUP_BATCH_MAX_AGE_MS": "15000",
        "CAPGROUP_FLUSH_CONCURRENCY": "8",
        "CAPGROUP_MAX_PARTITION_FETCH_BYTES": "524288",
        "CAPGROUP_SHUTDOWN_TIMEOUT_MS": "20000",
        "CAPGROUP_HTTP_PORT": "9200",
        "CAPGROUP_HTTP_HOST": "0.0.0.0",
        "CAPGROUP_LOG_LEVEL": "info",
        "CAPGROUP_LOG_FORMAT": "json",
    }
    spec = manifests["StatefulSet"]["spec"]
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 30  # 20 s + 5 s leave + 5 s exit
    assert spec["serviceName"] == manifests["Service"]["metadata"]["name"]
    main = container(manifests)
    assert main["command"] == ["capgroup", "run", "myservice.archive:Archiver"]
    assert main["image"] == "registry.example/archiver:0.1.0"
    assert main["resources"]["limits"]["memory"] == "2Gi"
    assert main["ports"] == [{"name": "http", "containerPort": 9200, "protocol": "TCP"}]
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert manifests["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert manifests["Service"]["spec"]["publishNotReadyAddresses"] is True
    assert "ServiceMonitor" not in manifests

    # The capgroup settings themselves accept what the chart renders.
    settings = settings_from(env, pod_name="rel-capgroup-1", memory_limit=2 * 1024**3)
    assert settings.group_instance_id == "rel-capgroup-1"
    assert settings.topics == ["events", "audit"]
    assert settings.max_partitions == 12
    assert settings.memory_budget_fraction == 0.5
    assert settings.weight == 2.5
    assert settings.container_memory_limit_bytes == 2 * 1024**3
    assert settings.http_port == 9200
    assert settings.shutdown_timeout_ms * 1 < pod["terminationGracePeriodSeconds"] * 1000


def settings_from(
    env: dict[str, Any],
    *,
    pod_name: str,
    memory_limit: int,
    secrets: Mapping[tuple[str, str], str] | None = None,
    mounts: Mapping[str, Path] | None = None,
) -> CapgroupSettings:
    """Load settings from a rendered env, resolving the downward API as the kubelet would.

    ``secrets`` resolves a ``secretKeyRef`` (``(secret name, key)`` -> value); ``mounts`` maps
    a container mount path to the local directory standing in for it, so file settings
    (which the settings check exist) point at real files."""
    resolved = {}
    for name, value in env.items():
        if not name.startswith("CAPGROUP_"):
            continue
        if isinstance(value, str):
            for mount_path, local in (mounts or {}).items():
                if value.startswith(mount_path.rstrip("/") + "/"):
                    value = str(local / value[len(mount_path.rstrip("/")) + 1 :])
            resolved[name] = value
        elif "secretKeyRef" in value:
            ref = value["secretKeyRef"]
            resolved[name] = (secrets or {})[(ref["name"], ref["key"])]
        elif "fieldRef" in value:
            assert value["fieldRef"]["fieldPath"] == "metadata.name"
            resolved[name] = pod_name
        else:
            assert value["resourceFieldRef"]["resource"] == "limits.memory"
            resolved[name] = str(memory_limit)
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("CAPGROUP_"):
                patch.delenv(name)
        for name, value in resolved.items():
            patch.setenv(name, value)
        return load_settings()


def test_defaults_compute_the_grace_period_and_optional_parts_switch_on() -> None:
    defaults = render()
    pod = defaults["StatefulSet"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 35  # 25 s + 5 s + 5 s
    assert "CAPGROUP_MEMORY_BUDGET_BYTES" not in env_of(defaults)
    assert "CAPGROUP_DRAINING" not in env_of(defaults)

    extra = render(
        {
            "metrics.serviceMonitor.enabled": "true",
            "capacity.memoryBudgetBytes": "268435456",
            "group.staticMembership": "false",
            "podDisruptionBudget.enabled": "false",
            "drain.fromOrdinal": "2",
        }
    )
    monitor = extra["ServiceMonitor"]["spec"]
    assert monitor["endpoints"][0]["port"] == "http"
    assert monitor["endpoints"][0]["path"] == "/metrics"
    assert "PodDisruptionBudget" not in extra
    env = env_of(extra)
    assert env["CAPGROUP_MEMORY_BUDGET_BYTES"] == "268435456"
    assert "CAPGROUP_GROUP_INSTANCE_ID" not in env
    assert env["DRAIN_FROM_ORDINAL"] == "2"
    command = container(extra)["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    assert command[-1] == "myservice.archive:Archiver"


@pytest.mark.parametrize(
    ("pod_name", "draining"),
    [("rel-capgroup-1", False), ("rel-capgroup-2", True), ("rel-capgroup-10", True)],
)
def test_the_drain_wrapper_drains_pods_from_the_ordinal_on(
    pod_name: str, draining: bool, tmp_path: Path
) -> None:
    """Runs the rendered shell wrapper with a stand-in ``capgroup`` that prints its env."""
    command = container(render({"drain.fromOrdinal": "2"}))["command"]
    fake = tmp_path / "capgroup"
    fake.write_text('#!/bin/sh\necho "args=$*"\necho "draining=${CAPGROUP_DRAINING:-unset}"\n')
    fake.chmod(0o755)
    environment = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "POD_NAME": pod_name,
        "DRAIN_FROM_ORDINAL": "2",
    }
    result = subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=10, check=True
    )
    assert result.stdout.splitlines() == [
        "args=run myservice.archive:Archiver",
        f"draining={'true' if draining else 'unset'}",
    ]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"terminationGracePeriodSeconds": "30"},
            "terminationGracePeriodSeconds (30) is too short",
        ),
        ({"app.target": "not-a-target"}, "is not package.module:ClassName"),
        ({"app.target": ""}, "app.target is required"),
        ({"resources.limits.memory": "null"}, "resources.limits.memory is required"),
        ({"capacity.memoryBudgetFraction": "1.5"}, "capacity.memoryBudgetFraction"),
        ({"group.heartbeatIntervalMs": "30000"}, "at most a third"),
        ({"http.port": "0"}, "http.port: Must be greater than or equal to 1"),  # schema
    ],
    ids=[
        "grace-too-short",
        "bad-target",
        "no-target",
        "no-memory-limit",
        "fraction",
        "heartbeat",
        "port",
    ],
)
def test_bad_values_fail_the_render_with_a_clear_message(
    values: dict[str, str], message: str
) -> None:
    result = helm("template", "rel", values=values)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_a_grace_period_that_fits_is_kept() -> None:
    pod = render({"terminationGracePeriodSeconds": "60"})["StatefulSet"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 60


# ------------------------------------------------------------- secured clusters ------
#: A password that must never appear in a render, a values file or an error message.
PASSWORD = "correct-horse-battery-staple"


def volumes_of(manifests: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The pod's volumes by name."""
    pod = manifests["StatefulSet"]["spec"]["template"]["spec"]
    return {v["name"]: v for v in pod.get("volumes", [])}


def mounts_of(manifests: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The consumer container's volume mounts by volume name."""
    return {m["name"]: m for m in container(manifests).get("volumeMounts", [])}


def test_no_security_values_render_no_security_env_and_no_volumes() -> None:
    manifests = render()
    assert not {name for name in env_of(manifests) if "SSL" in name or "SASL" in name}
    assert "CAPGROUP_SECURITY_PROTOCOL" not in env_of(manifests)
    assert volumes_of(manifests) == {}
    assert "volumeMounts" not in container(manifests)
    assert "envFrom" not in container(manifests)
    assert "volumeClaimTemplates" not in manifests["StatefulSet"]["spec"]
    assert "serviceAccountName" not in manifests["StatefulSet"]["spec"]["template"]["spec"]
    assert "ServiceAccount" not in manifests


def test_sasl_scram_password_comes_from_a_secret_key_ref(tmp_path: Path) -> None:
    overlay = {
        "kafka": {
            "securityProtocol": "SASL_SSL",
            "tls": {"existingSecret": "kafka-ca"},
            "sasl": {
                "mechanism": "SCRAM-SHA-512",
                "username": "archiver",
                "existingSecret": "archiver-kafka",
                "passwordKey": "scram-password",
            },
        }
    }
    result = helm("template", "rel", overlay=overlay)
    assert result.returncode == 0, result.stderr
    manifests = {d["kind"]: d for d in yaml.safe_load_all(result.stdout) if d}
    env = env_of(manifests)
    assert env["CAPGROUP_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["CAPGROUP_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert env["CAPGROUP_SASL_USERNAME"] == "archiver"
    assert env["CAPGROUP_SASL_PASSWORD"] == {
        "secretKeyRef": {"name": "archiver-kafka", "key": "scram-password"}
    }
    assert "CAPGROUP_SASL_PASSWORD_FILE" not in env
    # The CA (public part) is a mounted file; the password is not.
    assert env["CAPGROUP_SSL_CAFILE"] == "/etc/capgroup/kafka-tls/ca.crt"
    assert set(volumes_of(manifests)) == {"kafka-tls"}
    assert "CAPGROUP_SSL_CHECK_HOSTNAME" not in env  # the setting's default (true) applies

    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    settings = settings_from(
        env,
        pod_name="rel-capgroup-0",
        memory_limit=1024**3,
        secrets={("archiver-kafka", "scram-password"): PASSWORD},
        mounts={"/etc/capgroup/kafka-tls": tmp_path},
    )
    assert settings.security_protocol == "SASL_SSL"
    assert settings.sasl_mechanism == "SCRAM-SHA-512"
    assert settings.sasl_username == "archiver"
    assert settings.sasl_password_value() == PASSWORD
    assert settings.ssl_cafile == tmp_path / "ca.crt"
    assert settings.ssl_check_hostname is True
    assert PASSWORD not in repr(settings)


def test_sasl_plain_password_can_be_a_mounted_file_and_the_username_a_secret(
    tmp_path: Path,
) -> None:
    overlay = {
        "kafka": {
            "securityProtocol": "SASL_SSL",
            "sasl": {
                "mechanism": "PLAIN",
                "existingSecret": "confluent-api-key",
                "usernameKey": "key",
                "passwordKey": "secret",
                "passwordAsFile": True,
            },
        }
    }
    manifests = render(overlay=overlay)
    env = env_of(manifests)
    assert env["CAPGROUP_SASL_USERNAME"] == {
        "secretKeyRef": {"name": "confluent-api-key", "key": "key"}
    }
    assert "CAPGROUP_SASL_PASSWORD" not in env
    assert env["CAPGROUP_SASL_PASSWORD_FILE"] == "/etc/capgroup/kafka-sasl/secret"
    assert "CAPGROUP_SSL_CAFILE" not in env  # public CA: the system trust store
    volume = volumes_of(manifests)["kafka-sasl"]
    assert volume["secret"]["secretName"] == "confluent-api-key"
    assert volume["secret"]["items"] == [{"key": "secret", "path": "secret"}]
    assert mounts_of(manifests)["kafka-sasl"] == {
        "name": "kafka-sasl",
        "mountPath": "/etc/capgroup/kafka-sasl",
        "readOnly": True,
    }
    (tmp_path / "secret").write_text(PASSWORD + "\n")
    settings = settings_from(
        env,
        pod_name="rel-capgroup-0",
        memory_limit=1024**3,
        secrets={("confluent-api-key", "key"): "ABCDEFGH"},
        mounts={"/etc/capgroup/kafka-sasl": tmp_path},
    )
    assert settings.sasl_mechanism == "PLAIN"
    assert settings.sasl_username == "ABCDEFGH"
    assert settings.sasl_password is None
    assert settings.sasl_password_value() == PASSWORD


def test_mtls_certificates_are_mounted_from_a_secret_and_env_points_into_it(
    tmp_path: Path,
) -> None:
    overlay = {
        "kafka": {
            "securityProtocol": "SSL",
            "tls": {
                "existingSecret": "aiven-client",
                "mountPath": "/var/run/kafka-tls",
                "caKey": "ca.pem",
                "certKey": "service.cert",
                "keyKey": "service.key",
                "keyPasswordKey": "key-password",
                "checkHostname": False,
                "defaultMode": 0o440,
            },
        },
        "podSecurityContext": {"fsGroup": 10001},
    }
    manifests = render(overlay=overlay)
    env = env_of(manifests)
    files = {
        "CAPGROUP_SSL_CAFILE": "ca.pem",
        "CAPGROUP_SSL_CERTFILE": "service.cert",
        "CAPGROUP_SSL_KEYFILE": "service.key",
        "CAPGROUP_SSL_KEY_PASSWORD_FILE": "key-password",
    }
    for name, key in files.items():
        assert env[name] == f"/var/run/kafka-tls/{key}"
    assert env["CAPGROUP_SSL_CHECK_HOSTNAME"] == "false"
    assert "CAPGROUP_SASL_MECHANISM" not in env
    volume = volumes_of(manifests)["kafka-tls"]["secret"]
    assert volume["secretName"] == "aiven-client"
    assert volume["defaultMode"] == 0o440
    assert volume["items"] == [{"key": k, "path": k} for k in files.values()]
    assert mounts_of(manifests)["kafka-tls"] == {
        "name": "kafka-tls",
        "mountPath": "/var/run/kafka-tls",
        "readOnly": True,
    }
    # Every file setting points into the mount, at a file the volume provides.
    mount = mounts_of(manifests)["kafka-tls"]["mountPath"]
    provided = {f"{mount}/{item['path']}" for item in volume["items"]}
    assert {env[name] for name in files} == provided

    for key in files.values():
        (tmp_path / key).write_text("pem\n")
    settings = settings_from(
        env,
        pod_name="rel-capgroup-0",
        memory_limit=1024**3,
        mounts={"/var/run/kafka-tls": tmp_path},
    )
    assert settings.security_protocol == "SSL"
    assert settings.ssl_cafile == tmp_path / "ca.pem"
    assert settings.ssl_certfile == tmp_path / "service.cert"
    assert settings.ssl_keyfile == tmp_path / "service.key"
    assert settings.ssl_key_password_file == tmp_path / "key-password"
    assert settings.ssl_check_hostname is False


def test_msk_iam_uses_oauthbearer_the_region_and_an_annotated_service_account() -> None:
    role = "arn:aws:iam::123456789012:role/archiver-msk"
    overlay = {
        "kafka": {
            "securityProtocol": "SASL_SSL",
            "sasl": {"mechanism": "OAUTHBEARER"},
            "msk": {"region": "eu-west-1"},
        },
        "serviceAccount": {
            "create": True,
            "annotations": {"eks.amazonaws.com/role-arn": role},
        },
    }
    manifests = render(overlay=overlay)
    env = env_of(manifests)
    assert env["CAPGROUP_SASL_MECHANISM"] == "OAUTHBEARER"
    assert env["CAPGROUP_MSK_REGION"] == "eu-west-1"
    assert "CAPGROUP_SASL_OAUTH_TOKEN_PROVIDER" not in env
    assert "CAPGROUP_SASL_PASSWORD" not in env
    account = manifests["ServiceAccount"]["metadata"]
    assert account["name"] == "rel-capgroup"
    assert account["annotations"] == {"eks.amazonaws.com/role-arn": role}
    pod = manifests["StatefulSet"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "rel-capgroup"
    settings = settings_from(env, pod_name="rel-capgroup-0", memory_limit=1024**3)
    assert settings.sasl_mechanism == "OAUTHBEARER"
    assert settings.msk_region == "eu-west-1"

    # An existing service account (e.g. made by eksctl) is used as named, not created.
    named = render(
        overlay={**overlay, "serviceAccount": {"create": False}},
        values={"serviceAccountName": "archiver-irsa"},
    )
    assert "ServiceAccount" not in named
    assert named["StatefulSet"]["spec"]["template"]["spec"]["serviceAccountName"] == (
        "archiver-irsa"
    )


def test_a_custom_oauth_token_provider_is_passed_through() -> None:
    overlay = {
        "kafka": {
            "securityProtocol": "SASL_SSL",
            "sasl": {
                "mechanism": "OAUTHBEARER",
                "oauthTokenProvider": "myservice.auth:fetch_token",
            },
        }
    }
    env = env_of(render(overlay=overlay))
    assert env["CAPGROUP_SASL_OAUTH_TOKEN_PROVIDER"] == "myservice.auth:fetch_token"
    settings = settings_from(env, pod_name="rel-capgroup-0", memory_limit=1024**3)
    assert settings.sasl_oauth_token_provider == "myservice.auth:fetch_token"


def test_extra_env_env_from_volumes_and_volume_claim_templates_render() -> None:
    overlay = {
        "extraEnv": [
            {"name": "CAPGROUP_FLUSH_FAILURE_POLICY", "value": "dead_letter"},
            {"name": "CAPGROUP_DEAD_LETTER_TOPIC", "value": "archiver-dlq"},
            {
                "name": "SINK_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": "sink", "key": "token"}},
            },
        ],
        "envFrom": [{"configMapRef": {"name": "archiver-config"}}],
        "extraVolumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}],
        "extraVolumeMounts": [
            {"name": "scratch", "mountPath": "/tmp/scratch"},
            {"name": "data", "mountPath": "/var/lib/archiver"},
        ],
        "volumeClaimTemplates": [
            {
                "metadata": {"name": "data"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "gp3",
                    "resources": {"requests": {"storage": "20Gi"}},
                },
            }
        ],
    }
    manifests = render(overlay=overlay)
    main = container(manifests)
    env = env_of(manifests)
    assert env["CAPGROUP_FLUSH_FAILURE_POLICY"] == "dead_letter"
    assert env["SINK_TOKEN"] == {"secretKeyRef": {"name": "sink", "key": "token"}}
    # extraEnv comes after the chart's own variables.
    names = [e["name"] for e in main["env"]]
    assert names[-3:] == [
        "CAPGROUP_FLUSH_FAILURE_POLICY",
        "CAPGROUP_DEAD_LETTER_TOPIC",
        "SINK_TOKEN",
    ]
    assert main["envFrom"] == [{"configMapRef": {"name": "archiver-config"}}]
    assert volumes_of(manifests) == {
        "scratch": {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}
    }
    assert main["volumeMounts"] == overlay["extraVolumeMounts"]
    spec = manifests["StatefulSet"]["spec"]
    assert spec["volumeClaimTemplates"] == overlay["volumeClaimTemplates"]
    settings = settings_from(env, pod_name="rel-capgroup-0", memory_limit=1024**3)
    assert settings.flush_failure_policy == "dead_letter"
    assert settings.dead_letter_topic == "archiver-dlq"


def test_security_volumes_come_before_the_extra_ones() -> None:
    overlay = {
        "kafka": {
            "securityProtocol": "SASL_SSL",
            "tls": {"existingSecret": "kafka-ca"},
            "sasl": {
                "mechanism": "SCRAM-SHA-256",
                "username": "u",
                "existingSecret": "kafka-user",
                "passwordAsFile": True,
            },
        },
        "extraVolumes": [{"name": "scratch", "emptyDir": {}}],
        "extraVolumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
    }
    manifests = render(overlay=overlay)
    assert list(volumes_of(manifests)) == ["kafka-tls", "kafka-sasl", "scratch"]
    assert list(mounts_of(manifests)) == ["kafka-tls", "kafka-sasl", "scratch"]


SECURED = {"securityProtocol": "SASL_SSL"}
SCRAM = {"mechanism": "SCRAM-SHA-512", "username": "u", "existingSecret": "s"}


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        (
            {"kafka": {**SECURED, "sasl": {**SCRAM, "password": PASSWORD}}},
            "kafka.sasl.password is not a value of this chart",
        ),
        (
            {"extraEnv": [{"name": "CAPGROUP_SASL_PASSWORD", "value": PASSWORD}]},
            "extraEnv CAPGROUP_SASL_PASSWORD has a plain value",
        ),
        ({"kafka": {"securityProtocol": "TLS"}}, "kafka.securityProtocol must be one of"),
        ({"kafka": SECURED}, "kafka.sasl.mechanism is required with kafka.securityProtocol"),
        (
            {"kafka": {"securityProtocol": "SSL", "sasl": SCRAM}},
            "needs kafka.securityProtocol SASL_SSL or SASL_PLAINTEXT, not SSL",
        ),
        (
            {"kafka": {**SECURED, "sasl": {"mechanism": "SCRAM-SHA-512", "username": "u"}}},
            "kafka.sasl.existingSecret is required with SCRAM-SHA-512",
        ),
        (
            {"kafka": {**SECURED, "sasl": {"mechanism": "PLAIN", "existingSecret": "s"}}},
            "kafka.sasl.username (or kafka.sasl.usernameKey) is required with PLAIN",
        ),
        (
            {"kafka": {**SECURED, "sasl": {"mechanism": "OAUTHBEARER"}}},
            "OAUTHBEARER needs exactly one of",
        ),
        (
            {
                "kafka": {
                    **SECURED,
                    "sasl": {"mechanism": "OAUTHBEARER", "oauthTokenProvider": "a.b:c"},
                    "msk": {"region": "eu-west-1"},
                }
            },
            "OAUTHBEARER needs exactly one of",
        ),
        (
            {"kafka": {"msk": {"region": "eu-west-1"}}},
            "need kafka.sasl.mechanism OAUTHBEARER",
        ),
        (
            {"kafka": {"tls": {"existingSecret": "kafka-ca"}}},
            "kafka.tls.existingSecret is set but kafka.securityProtocol is PLAINTEXT",
        ),
        (
            {"kafka": {"securityProtocol": "SSL", "tls": {"existingSecret": "c", "certKey": "a"}}},
            "kafka.tls.certKey and kafka.tls.keyKey go together",
        ),
        (
            {"kafka": {"securityProtocol": "SSL", "tls": {"certKey": "a", "keyKey": "b"}}},
            "keys of kafka.tls.existingSecret, which is not set",
        ),
        (
            {"volumeClaimTemplates": [{"spec": {"accessModes": ["ReadWriteOnce"]}}]},
            "each of volumeClaimTemplates needs metadata.name",
        ),
    ],
    ids=[
        "plain-password",
        "plain-password-in-extra-env",
        "bad-protocol",
        "sasl-without-mechanism",
        "mechanism-without-sasl",
        "scram-without-secret",
        "plain-without-username",
        "oauth-without-provider",
        "oauth-with-two-providers",
        "msk-without-oauth",
        "tls-secret-with-plaintext",
        "cert-without-key",
        "cert-without-secret",
        "claim-without-name",
    ],
)
def test_bad_security_values_fail_the_render_without_echoing_secrets(
    overlay: dict[str, Any], message: str
) -> None:
    result = helm("template", "rel", overlay=overlay)
    assert result.returncode != 0, result.stdout
    assert message in result.stderr, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
