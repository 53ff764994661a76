"""Settings: invalid values fail naming the variable and the accepted range; .env is read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from capgroup.settings import CapgroupSettings, SettingsError, load_settings


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
