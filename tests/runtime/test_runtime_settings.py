"""Settings added for the runtime: defaults valid, cross-field rules named in the error."""

from __future__ import annotations

from typing import Any

import pytest

from capgroup.settings import SettingsError, load_settings


def test_runtime_defaults_are_valid() -> None:
    settings = load_settings()
    assert settings.flush_failure_policy == "stop_partition"
    assert settings.dead_letter_topic is None
    assert settings.revoke_safety_margin_ms < settings.rebalance_timeout_ms
    assert settings.rss_soft_limit_fraction < settings.rss_hard_limit_fraction
    assert settings.shutdown_timeout_ms < 30_000  # inside Kubernetes' default grace period


def test_dead_letter_policy_with_a_topic_is_accepted() -> None:
    settings = load_settings(flush_failure_policy="dead_letter", dead_letter_topic="events.dlq")
    assert settings.dead_letter_topic == "events.dlq"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"flush_failure_policy": "dead_letter"}, "CAPGROUP_DEAD_LETTER_TOPIC"),
        ({"flush_retry_initial_ms": 5_000, "flush_retry_max_ms": 1_000}, "flush_retry_max_ms"),
        (
            {"revoke_safety_margin_ms": 30_000, "rebalance_timeout_ms": 30_000},
            "revoke_safety_margin_ms",
        ),
        (
            {"rss_soft_limit_fraction": 0.9, "rss_hard_limit_fraction": 0.9},
            "rss_hard_limit_fraction",
        ),
    ],
)
def test_cross_field_rules_name_the_setting(overrides: dict[str, Any], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(**overrides)


@pytest.mark.parametrize(
    ("name", "value", "variable"),
    [
        ("flush_failure_policy", "retry_forever", "CAPGROUP_FLUSH_FAILURE_POLICY"),
        ("flush_retry_max_attempts", 0, "CAPGROUP_FLUSH_RETRY_MAX_ATTEMPTS"),
        ("rss_hard_limit_fraction", 1.5, "CAPGROUP_RSS_HARD_LIMIT_FRACTION"),
        ("container_memory_limit_bytes", 0, "CAPGROUP_CONTAINER_MEMORY_LIMIT_BYTES"),
        ("dead_letter_topic", "", "CAPGROUP_DEAD_LETTER_TOPIC"),
    ],
)
def test_bounds_are_enforced_per_setting(name: str, value: object, variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings(**{name: value})


def test_environment_selects_the_failure_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPGROUP_FLUSH_FAILURE_POLICY", "dead_letter")
    monkeypatch.setenv("CAPGROUP_DEAD_LETTER_TOPIC", "dlq")
    assert load_settings().flush_failure_policy == "dead_letter"
