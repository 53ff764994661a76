"""Settings: invalid values fail naming the variable and the accepted range; .env is read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from capgroup.settings import CapgroupSettings, SettingsError, load_settings, unknown_variables


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No CAPGROUP_* from the outside, and a working directory without a .env file."""
    for name in list(os.environ):
        if name.startswith("CAPGROUP_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def problems_for(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    return str(info.value)


def test_defaults_are_valid() -> None:
    settings = load_settings()
    assert settings.bootstrap_servers == ["127.0.0.1:9092"]
    assert settings.heartbeat_interval_ms * 3 <= settings.session_timeout_ms
    assert settings.effective_request_timeout_ms > settings.rebalance_timeout_ms


def test_negative_session_timeout_names_variable_and_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = problems_for(monkeypatch, CAPGROUP_SESSION_TIMEOUT_MS="-5")
    assert "CAPGROUP_SESSION_TIMEOUT_MS" in message
    assert "accepted range: >= 1000 and <= 1800000" in message
    assert "-5" in message


@pytest.mark.parametrize("servers", ["localhost", "host:0", "host:70000", "host:abc", ":9092"])
def test_bad_bootstrap_servers(monkeypatch: pytest.MonkeyPatch, servers: str) -> None:
    message = problems_for(monkeypatch, CAPGROUP_BOOTSTRAP_SERVERS=servers)
    assert "CAPGROUP_BOOTSTRAP_SERVERS" in message
    assert "1..65535" in message


def test_bootstrap_servers_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPGROUP_BOOTSTRAP_SERVERS", "a:1, b:2 ,")
    assert load_settings().bootstrap_servers == ["a:1", "b:2"]


@pytest.mark.parametrize(
    ("env", "expected", "fix"),
    [
        pytest.param(
            {"CAPGROUP_SESSION_TIMEOUT_MS": "6000", "CAPGROUP_HEARTBEAT_INTERVAL_MS": "2001"},
            "heartbeat_interval_ms must be at most a third of session_timeout_ms",
            ("CAPGROUP_HEARTBEAT_INTERVAL_MS", "2000"),
            id="heartbeat-above-session-third",
        ),
        pytest.param(
            {"CAPGROUP_REBALANCE_TIMEOUT_MS": "30000", "CAPGROUP_REQUEST_TIMEOUT_MS": "30000"},
            "request_timeout_ms must exceed rebalance_timeout_ms",
            ("CAPGROUP_REQUEST_TIMEOUT_MS", "30001"),
            id="request-not-above-rebalance",
        ),
    ],
)
def test_inconsistent_timeouts_fail_and_the_boundary_passes(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str, fix: tuple[str, str]
) -> None:
    assert expected in problems_for(monkeypatch, **env)
    monkeypatch.setenv(*fix)
    settings = load_settings()
    assert settings.heartbeat_interval_ms * 3 <= settings.session_timeout_ms
    assert settings.effective_request_timeout_ms > settings.rebalance_timeout_ms


def test_every_invalid_setting_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    message = problems_for(
        monkeypatch, CAPGROUP_MAX_PARTITIONS="-1", CAPGROUP_MEMORY_BUDGET_FRACTION="1.5"
    )
    assert "CAPGROUP_MAX_PARTITIONS" in message
    assert "CAPGROUP_MEMORY_BUDGET_FRACTION" in message
    assert "accepted range: > 0.0 and <= 1.0" in message


def test_dotenv_file_is_read(clean_env: Path) -> None:
    (clean_env / ".env").write_text(
        "CAPGROUP_GROUP_ID=from-dotenv\nCAPGROUP_TOPICS=a,b\nCAPGROUP_MAX_PARTITIONS=7\n"
    )
    settings = load_settings()
    assert settings.group_id == "from-dotenv"
    assert settings.topics == ["a", "b"]
    assert settings.max_partitions == 7


def test_environment_overrides_dotenv(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / ".env").write_text("CAPGROUP_GROUP_ID=from-dotenv\n")
    monkeypatch.setenv("CAPGROUP_GROUP_ID", "from-env")
    assert load_settings().group_id == "from-env"


def test_invalid_dotenv_value_is_reported(clean_env: Path) -> None:
    (clean_env / ".env").write_text("CAPGROUP_SESSION_TIMEOUT_MS=-5\n")
    with pytest.raises(SettingsError, match="CAPGROUP_SESSION_TIMEOUT_MS"):
        load_settings()


def test_every_setting_has_a_description() -> None:
    missing = [n for n, f in CapgroupSettings.model_fields.items() if not f.description]
    assert missing == []


def run_config(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``capgroup config`` in a subprocess with only the given CAPGROUP_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CAPGROUP_")}
    return subprocess.run(
        [sys.executable, "-m", "capgroup.cli.main", "config"],
        capture_output=True,
        text=True,
        env=clean | env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_cli_config_rejects_bad_env_without_traceback(clean_env: Path) -> None:
    result = run_config(clean_env, CAPGROUP_SESSION_TIMEOUT_MS="-5")
    assert result.returncode == 2, result.stderr
    assert "CAPGROUP_SESSION_TIMEOUT_MS" in result.stderr
    assert "accepted range" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_config_prints_effective_settings(clean_env: Path) -> None:
    result = run_config(clean_env, CAPGROUP_GROUP_ID="cli-group")
    assert result.returncode == 0, result.stderr
    assert '"group_id": "cli-group"' in result.stdout


# --- Kafka's naming rules, unknown variables, config --check (issue 10) ----------------------


@pytest.mark.parametrize(
    "topic", ["bad topic!", ".", "..", "x" * 250, "a/b", "tópico", "a,,b ,bad:name"]
)
def test_invalid_topic_names_name_the_variable(monkeypatch: pytest.MonkeyPatch, topic: str) -> None:
    message = problems_for(monkeypatch, CAPGROUP_TOPICS=topic)
    assert "CAPGROUP_TOPICS" in message
    assert "is not a valid Kafka topic name" in message


@pytest.mark.parametrize("topic", ["a", "x" * 249, "events.v1", "my_topic-2", "...", "_"])
def test_valid_topic_names_pass(monkeypatch: pytest.MonkeyPatch, topic: str) -> None:
    monkeypatch.setenv("CAPGROUP_TOPICS", f"{topic},other")
    assert load_settings().topics == [topic, "other"]


def test_dead_letter_topic_follows_the_topic_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    message = problems_for(monkeypatch, CAPGROUP_DEAD_LETTER_TOPIC="dead letters")
    assert "CAPGROUP_DEAD_LETTER_TOPIC" in message
    assert "is not a valid Kafka topic name" in message


def test_blank_group_id_is_rejected_and_empty_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    message = problems_for(monkeypatch, CAPGROUP_GROUP_ID="   ")
    assert "CAPGROUP_GROUP_ID" in message
    assert "only whitespace" in message
    monkeypatch.setenv("CAPGROUP_GROUP_ID", "")
    assert load_settings().group_id == ""


def test_bootstrap_timeout_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().bootstrap_timeout_ms == 60_000
    message = problems_for(monkeypatch, CAPGROUP_BOOTSTRAP_TIMEOUT_MS="10")
    assert "CAPGROUP_BOOTSTRAP_TIMEOUT_MS" in message
    assert ">= 1000" in message


def test_unknown_variables_name_the_closest_setting(clean_env: Path) -> None:
    (clean_env / ".env").write_text("CAPGROUP_TOPIC=a\nCAPGROUP_GROUP_ID=g\n")
    found = unknown_variables(
        {
            "CAPGROUP_GROUPID": "g",
            "CAPGROUP_GROUP_ID": "g",
            "capgroup_max_partition": "3",
            "CAPGROUP_KAFKA_CACHE": "/tmp/cache",
            "CAPGROUP_ZZZZZZZZZZZZZZZZZZZZZ": "1",
            "PATH": "/bin",
        }
    )
    assert ("environment", "CAPGROUP_GROUPID", "CAPGROUP_GROUP_ID") in found
    assert ("environment", "capgroup_max_partition", "CAPGROUP_MAX_PARTITIONS") in found
    assert ("environment", "CAPGROUP_ZZZZZZZZZZZZZZZZZZZZZ", None) in found
    assert (".env", "CAPGROUP_TOPIC", "CAPGROUP_TOPICS") in found
    assert len(found) == 4, found


def run_cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``capgroup ARGS`` in a subprocess with only the given CAPGROUP_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CAPGROUP_")}
    return subprocess.run(
        [sys.executable, "-m", "capgroup.cli.main", *args],
        capture_output=True,
        text=True,
        env=clean | env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_misspelt_group_id_warns_naming_the_setting_without_failing(clean_env: Path) -> None:
    result = run_cli(clean_env, "config", CAPGROUP_GROUPID="g", CAPGROUP_TOPICS="t")
    assert result.returncode == 0, result.stderr
    (warning,) = [json.loads(line) for line in result.stderr.splitlines()]
    assert warning["event"] == "unknown_setting"
    assert warning["level"] == "warning"
    assert warning["variable"] == "CAPGROUP_GROUPID"
    assert warning["did_you_mean"] == "CAPGROUP_GROUP_ID"
    assert "did you mean CAPGROUP_GROUP_ID?" in warning["message"]


def test_config_check_fails_naming_what_run_needs(clean_env: Path) -> None:
    result = run_cli(clean_env, "config", "--check", CAPGROUP_GROUPID="g")
    assert result.returncode == 2, result.stderr
    assert "CAPGROUP_GROUP_ID (group_id): required to run a consumer" in result.stderr
    assert "CAPGROUP_TOPICS (topics): required to run a consumer" in result.stderr
    assert "did you mean CAPGROUP_GROUP_ID?" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_config_check_passes_when_run_has_what_it_needs(clean_env: Path) -> None:
    result = run_cli(clean_env, "config", "--check", CAPGROUP_GROUP_ID="g", CAPGROUP_TOPICS="t")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["topics"] == ["t"]
