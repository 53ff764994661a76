"""Range-job settings (issue 14): off by default, opt-in per topic, and every inconsistency
names its ``CAPGROUP_*`` variable (``capgroup config --check`` then exits 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from capgroup.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("CAPGROUP_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def problems(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    return str(info.value)


def test_off_by_default() -> None:
    settings = load_settings(topics="a", group_id="g")
    assert settings.range_jobs_enabled is False
    assert settings.effective_range_jobs_topics == frozenset()


def test_enabled_for_every_topic_or_the_listed_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPGROUP_TOPICS", "a,b,c")
    monkeypatch.setenv("CAPGROUP_GROUP_ID", "grp")
    monkeypatch.setenv("CAPGROUP_RANGE_JOBS_ENABLED", "true")
    assert load_settings().effective_range_jobs_topics == {"a", "b", "c"}
    monkeypatch.setenv("CAPGROUP_RANGE_JOBS_TOPICS", "b, c")
    settings = load_settings()
    assert settings.effective_range_jobs_topics == {"b", "c"}
    assert settings.effective_range_jobs_topic == "grp.capgroup-jobs"
    assert settings.effective_range_jobs_completions_topic == "grp.capgroup-completions"


def test_topics_without_the_switch_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = problems(monkeypatch, CAPGROUP_TOPICS="a", CAPGROUP_RANGE_JOBS_TOPICS="a")
    assert "CAPGROUP_RANGE_JOBS_TOPICS" in message
    assert "CAPGROUP_RANGE_JOBS_ENABLED" in message


def test_a_range_jobs_topic_must_be_consumed(monkeypatch: pytest.MonkeyPatch) -> None:
    message = problems(
        monkeypatch,
        CAPGROUP_TOPICS="a",
        CAPGROUP_RANGE_JOBS_ENABLED="1",
        CAPGROUP_RANGE_JOBS_TOPICS="a,zz",
    )
    assert "CAPGROUP_RANGE_JOBS_TOPICS" in message
    assert "zz not among CAPGROUP_TOPICS" in message


@pytest.mark.parametrize(
    ("env", "variable", "text"),
    [
        ({"CAPGROUP_RANGE_JOBS_MAX_RECORDS": "0"}, "CAPGROUP_RANGE_JOBS_MAX_RECORDS", ">= 1"),
        ({"CAPGROUP_RANGE_JOBS_MAX_BYTES": "0"}, "CAPGROUP_RANGE_JOBS_MAX_BYTES", ">= 1"),
        ({"CAPGROUP_RANGE_JOBS_MAX_IN_FLIGHT": "0"}, "CAPGROUP_RANGE_JOBS_MAX_IN_FLIGHT", ">= 1"),
        ({"CAPGROUP_RANGE_JOBS_TIMEOUT_MS": "5"}, "CAPGROUP_RANGE_JOBS_TIMEOUT_MS", ">= 100"),
        ({"CAPGROUP_RANGE_JOBS_LAG_RECORDS": "-1"}, "CAPGROUP_RANGE_JOBS_LAG_RECORDS", ">= 1"),
        (
            {"CAPGROUP_RANGE_JOBS_METADATA_MAX_BYTES": "10"},
            "CAPGROUP_RANGE_JOBS_METADATA_MAX_BYTES",
            ">= 64",
        ),
        (
            {"CAPGROUP_RANGE_JOBS_TOPIC": "bad name"},
            "CAPGROUP_RANGE_JOBS_TOPIC",
            "not a valid Kafka topic name",
        ),
        (
            {
                "CAPGROUP_RANGE_JOBS_ENABLED": "true",
                "CAPGROUP_RANGE_JOBS_TOPIC": "x",
                "CAPGROUP_RANGE_JOBS_COMPLETIONS_TOPIC": "x",
            },
            "CAPGROUP_RANGE_JOBS_COMPLETIONS_TOPIC",
            "must differ",
        ),
        (
            {"CAPGROUP_RANGE_JOBS_ENABLED": "true", "CAPGROUP_RANGE_JOBS_TOPIC": "a"},
            "CAPGROUP_RANGE_JOBS_TOPIC",
            "one of the consumed topics",
        ),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str, text: str
) -> None:
    message = problems(monkeypatch, CAPGROUP_TOPICS="a", CAPGROUP_GROUP_ID="g", **env)
    assert variable in message
    assert text in message


def test_config_check_exits_2_naming_the_range_jobs_setting(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CAPGROUP_")}
    env = {
        "CAPGROUP_GROUP_ID": "g",
        "CAPGROUP_TOPICS": "a",
        "CAPGROUP_RANGE_JOBS_ENABLED": "true",
        "CAPGROUP_RANGE_JOBS_TOPICS": "b",
    }
    result = subprocess.run(
        [sys.executable, "-m", "capgroup.cli.main", "config", "--check"],
        capture_output=True,
        text=True,
        env=clean | env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "CAPGROUP_RANGE_JOBS_TOPICS" in result.stderr
    assert "b not among CAPGROUP_TOPICS" in result.stderr
    assert "Traceback" not in result.stderr
