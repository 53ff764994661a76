"""``capgroup run`` start-up failures: the documented exit code and one clear line, no traceback.

Exit codes (README, Configuration): 2 for invalid or missing settings and for a topic that does
not exist, 4 when no bootstrap server answers within ``CAPGROUP_BOOTSTRAP_TIMEOUT_MS``. The log
stream stays JSON from the first line (logging is configured before anything logs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiokafka.errors import KafkaConnectionError

from capgroup.cli.startup_errors import (
    EXIT_GROUP_FATAL,
    EXIT_KAFKA_UNREACHABLE,
    EXIT_USAGE,
    describe_startup_error,
    one_line,
)
from capgroup.errors import FencedInstanceError
from capgroup.membership import transport
from capgroup.membership.transport import KafkaUnreachableError, bootstrap_with_retries
from capgroup.runtime.fetcher import MissingTopicError
from capgroup.settings import SettingsError, load_settings
from tests.processes import capgroup_env

DEMO_MEMBER = "capgroup.cli.demo_archiver:DemoArchiver"


def run_member(
    cwd: Path, env: dict[str, str], timeout: float = 60
) -> tuple[subprocess.CompletedProcess[str], float]:
    """``capgroup run`` of the packaged demo member with only ``env`` as CAPGROUP_* settings,
    from ``cwd`` and without the checkout on the import path; returns the result and seconds."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith("CAPGROUP_") and k != "PYTHONPATH"
    }
    environment.update(env, ARCHIVER_DIR=str(cwd / "archive"))
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "capgroup.cli.main", "run", DEMO_MEMBER],
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return result, time.monotonic() - began


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line, parsed: each must be a JSON object (the log stream stays JSON)."""
    events = []
    for line in stderr.splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line on stderr: {line!r}\n{stderr[-3000:]}")
    return events


def the_failure(stderr: str, code: int) -> str:
    """The single ``startup_failed`` line's message (asserting there is exactly one)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    failures = [e for e in json_lines(stderr) if e["event"] == "startup_failed"]
    assert len(failures) == 1, stderr[-3000:]
    assert failures[0]["exit_code"] == code
    assert failures[0]["level"] == "error"
    message = failures[0]["error"]
    assert "\n" not in message
    return str(message)


def test_unreachable_bootstrap_retries_then_exits_4(tmp_path: Path) -> None:
    result, took = run_member(
        tmp_path,
        {
            "CAPGROUP_BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "CAPGROUP_BOOTSTRAP_TIMEOUT_MS": "2500",
            "CAPGROUP_GROUP_ID": "g",
            "CAPGROUP_TOPICS": "t",
            "CAPGROUP_LOG_FORMAT": "json",
        },
    )
    assert result.returncode == EXIT_KAFKA_UNREACHABLE == 4, result.stderr[-3000:]
    assert took < 30
    message = the_failure(result.stderr, 4)
    assert message.startswith("cannot reach Kafka at 127.0.0.1:1 (CAPGROUP_BOOTSTRAP_SERVERS)")
    assert "CAPGROUP_BOOTSTRAP_TIMEOUT_MS" in message
    events = json_lines(result.stderr)
    attempts = [e for e in events if e["event"] == "kafka_unreachable"]
    assert len(attempts) >= 2, "retried with backoff"
    assert [e["attempt"] for e in attempts] == list(range(1, len(attempts) + 1))
    for attempt in attempts:
        assert attempt["servers"] == "127.0.0.1:1"
        assert "Connect call failed" in attempt["error"]
    # One line per attempt: aiokafka's own "Unable connect" lines are held back.
    assert not [e for e in events if e.get("logger", "").startswith("aiokafka")]


def test_logging_is_json_from_the_first_line(tmp_path: Path) -> None:
    # No budget set: the consumer logs how it derived one while it is built, before it runs.
    result, _ = run_member(
        tmp_path,
        {
            "CAPGROUP_BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "CAPGROUP_BOOTSTRAP_TIMEOUT_MS": "1000",
            "CAPGROUP_GROUP_ID": "g",
            "CAPGROUP_TOPICS": "t",
        },
    )
    events = json_lines(result.stderr)
    assert events, result.stderr
    assert any(e["event"].startswith("memory_budget_from") for e in events), result.stderr


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CAPGROUP_TOPICS": "bad topic!"}, "CAPGROUP_TOPICS"),
        ({"CAPGROUP_TOPICS": ".."}, "CAPGROUP_TOPICS"),
        ({"CAPGROUP_GROUP_ID": "   "}, "CAPGROUP_GROUP_ID"),
        ({"CAPGROUP_GROUP_ID": ""}, "CAPGROUP_GROUP_ID (group_id): required to run a consumer"),
        ({"CAPGROUP_BOOTSTRAP_TIMEOUT_MS": "5"}, "CAPGROUP_BOOTSTRAP_TIMEOUT_MS"),
        ({"CAPGROUP_LOG_FORMAT": "xml"}, "CAPGROUP_LOG_FORMAT"),
    ],
    ids=["topic-chars", "topic-dotdot", "blank-group", "missing-group", "timeout", "log-format"],
)
def test_invalid_settings_exit_2_with_one_line(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    settings = {"CAPGROUP_BOOTSTRAP_SERVERS": "127.0.0.1:1", "CAPGROUP_GROUP_ID": "g"}
    settings["CAPGROUP_TOPICS"] = "t"
    result, _ = run_member(tmp_path, settings | env)
    assert result.returncode == EXIT_USAGE == 2, result.stderr[-3000:]
    message = the_failure(result.stderr, 2)
    assert named in message
    assert "kafka_unreachable" not in result.stderr, "settings are checked before connecting"


def test_unknown_variable_warns_in_json_and_the_run_goes_on(tmp_path: Path) -> None:
    result, _ = run_member(
        tmp_path,
        {
            "CAPGROUP_BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "CAPGROUP_BOOTSTRAP_TIMEOUT_MS": "1000",
            "CAPGROUP_GROUP_ID": "g",
            "CAPGROUP_TOPICS": "t",
            "CAPGROUP_MAX_PARTITION": "3",
        },
    )
    assert result.returncode == 4, result.stderr[-3000:]
    (warning,) = [e for e in json_lines(result.stderr) if e["event"] == "unknown_setting"]
    assert warning["variable"] == "CAPGROUP_MAX_PARTITION"
    assert warning["did_you_mean"] == "CAPGROUP_MAX_PARTITIONS"


@pytest.mark.kafka
def test_missing_topic_exits_2_within_seconds_naming_it(kafka: Any, tmp_path: Path) -> None:
    result, took = run_member(
        tmp_path,
        {
            "CAPGROUP_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "CAPGROUP_GROUP_ID": "missing-topic-test",
            "CAPGROUP_TOPICS": "capgroup-no-such-topic-10",
            "CAPGROUP_MEMORY_BUDGET_BYTES": str(256 * 1024 * 1024),
        },
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert took < 20, f"took {took:.1f} s"
    message = the_failure(result.stderr, 2)
    assert "'capgroup-no-such-topic-10'" in message
    assert "CAPGROUP_TOPICS" in message
    assert "does not exist" in message


def test_error_table() -> None:
    unreachable = KafkaUnreachableError(["a:1", "b:2"], 2000, 3, "refused")
    failure = describe_startup_error(unreachable)
    assert failure is not None
    assert failure.exit_code == EXIT_KAFKA_UNREACHABLE
    assert failure.message == (
        "cannot reach Kafka at a:1,b:2 (CAPGROUP_BOOTSTRAP_SERVERS) after 3 attempts in 2 s "
        "(CAPGROUP_BOOTSTRAP_TIMEOUT_MS): refused"
    )
    missing = describe_startup_error(MissingTopicError(["t1", "t2"], ["h:1"]))
    assert missing is not None
    assert missing.exit_code == EXIT_USAGE
    assert "topics 't1', 't2' do not exist on the cluster at h:1" in missing.message
    settings = describe_startup_error(SettingsError(["A: bad", "B: worse"]))
    assert settings is not None
    assert settings.message == "invalid capgroup settings: A: bad; B: worse"
    fenced = describe_startup_error(FencedInstanceError("fenced by a twin"))
    assert fenced is not None
    assert fenced.exit_code == EXIT_GROUP_FATAL
    assert describe_startup_error(RuntimeError("bug")) is None
    assert one_line("single") == "single"


@pytest.mark.anyio
async def test_bootstrap_retries_log_one_line_per_attempt_then_succeed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transport, "BOOTSTRAP_BACKOFF_INITIAL_S", 0.01)
    events: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(transport, "_log", Recorder(events))
    calls = 0

    async def connect() -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise KafkaConnectionError("Unable to bootstrap")

    settings = load_settings(bootstrap_servers="a:1,b:2", bootstrap_timeout_ms=5_000)
    await bootstrap_with_retries(connect, settings, client="fetch")
    assert calls == 3
    assert [name for name, _ in events] == [
        "kafka_unreachable",
        "kafka_unreachable",
        "kafka_reachable",
    ]
    assert events[0][1]["servers"] == "a:1,b:2"
    assert events[1][1]["attempt"] == 2
    assert events[2][1]["attempts"] == 3


@pytest.mark.anyio
async def test_bootstrap_gives_up_after_the_timeout_and_passes_other_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transport, "_log", Recorder([]))

    async def hang() -> None:
        await anyio.sleep(60)  # an address that never answers

    settings = load_settings(bootstrap_servers="10.255.255.1:9092", bootstrap_timeout_ms=1_000)
    began = anyio.current_time()
    with pytest.raises(KafkaUnreachableError, match="no answer before the bootstrap timeout"):
        await bootstrap_with_retries(hang, settings, client="coordinator")
    assert anyio.current_time() - began < 3

    async def misconfigured() -> None:
        raise ValueError("not a connection problem")

    with pytest.raises(ValueError, match="not a connection problem"):
        await bootstrap_with_retries(misconfigured, settings, client="fetch")


class Recorder:
    """Stands in for a structlog logger: keeps (event, fields)."""

    def __init__(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        self.events = events

    def info(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    warning = info


@pytest.mark.parametrize(
    "command",
    [["describe", "--group", "g"], ["doctor"], ["hotkeys", "t"]],
    ids=["describe", "doctor", "hotkeys"],
)
def test_inspection_commands_on_an_unreachable_kafka_are_one_line_and_exit_4(
    command: list[str],
) -> None:
    # describe, doctor and hotkeys share report_failure and --timeout.
    result = subprocess.run(
        [sys.executable, "-m", "capgroup.cli.main", *command, "--timeout", "1"],
        env=capgroup_env({"bootstrap_servers": "127.0.0.1:1"}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 4, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "cannot reach Kafka at 127.0.0.1:1" in lines[0]
