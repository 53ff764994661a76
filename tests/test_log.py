"""Logging: JSON lines off a TTY, console on a TTY, group and member ids on every event."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from capgroup.log import (
    StdlibBridge,
    bind_member,
    configure_logging,
    get_logger,
    quiet_foreign_logs,
)


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def fresh_context() -> Iterator[None]:
    structlog.contextvars.clear_contextvars()
    root = logging.getLogger()
    level = root.level
    yield
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    for handler in [h for h in root.handlers if isinstance(h, StdlibBridge)]:
        root.removeHandler(handler)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_when_not_a_tty_with_group_and_member() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, force=True)
    bind_member(group_id="g1", member_id="m-7")
    log = get_logger("test")
    log.info("partition_assigned", partition=3)
    log.warning("budget_low", free_bytes=10)

    events = lines(stream)
    assert [e["event"] for e in events] == ["partition_assigned", "budget_low"]
    for event in events:
        assert event["group_id"] == "g1"
        assert event["member_id"] == "m-7"
        assert event["component"] == "test"
        assert "timestamp" in event
    assert events[0]["partition"] == 3
    assert events[1]["level"] == "warning"


def test_events_carry_null_ids_before_binding() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, force=True)
    get_logger("test").info("starting")
    (event,) = lines(stream)
    assert event["group_id"] is None
    assert event["member_id"] is None


def test_logger_created_before_configuration_follows_it() -> None:
    early = get_logger("early")  # as a module-level logger would be
    stream = io.StringIO()
    configure_logging(stream=stream, force=True)
    early.info("late_event")
    (event,) = lines(stream)
    assert event["event"] == "late_event"
    assert event["component"] == "early"


def test_console_rendering_on_a_tty() -> None:
    stream = FakeTTY()
    configure_logging(stream=stream, force=True)
    bind_member(group_id="g1", member_id="m-7")
    get_logger("test").info("hello_console")
    text = stream.getvalue()
    assert "hello_console" in text
    assert "member_id" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_level_filters_events() -> None:
    stream = io.StringIO()
    configure_logging(level="warning", stream=stream, force=True)
    log = get_logger("test")
    log.info("dropped")
    log.error("kept")
    assert [e["event"] for e in lines(stream)] == ["kept"]


def test_configure_is_once_unless_forced() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(stream=first, force=True)
    configure_logging(stream=second)
    get_logger("test").info("where")
    assert first.getvalue()
    assert not second.getvalue()


# --- the standard library's records (aiokafka's) as JSON, rate-limited (issue 10) ------------


def test_aiokafka_records_come_out_as_json_lines() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, force=True)
    bind_member(group_id="g1")
    logging.getLogger("aiokafka.conn").error('Unable connect to "%s:%s": %s', "h", 9092, "refused")
    logging.getLogger("aiokafka.client").debug("below the level: dropped")
    (event,) = lines(stream)
    assert event["event"] == 'Unable connect to "h:9092": refused'
    assert event["logger"] == "aiokafka.conn"
    assert event["level"] == "error"
    assert event["group_id"] == "g1"
    assert "timestamp" in event


def test_stdlib_exception_is_rendered_inside_the_json_line() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, force=True)
    try:
        raise ConnectionError("broker gone")
    except ConnectionError:
        logging.getLogger("asyncio").exception("task failed")
    (event,) = lines(stream)
    assert event["event"] == "task failed"
    assert "ConnectionError: broker gone" in event["exception"]


def test_repeated_stdlib_messages_are_rate_limited_with_a_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, force=True)
    clock = [1000.0]
    monkeypatch.setattr("capgroup.log.time.monotonic", lambda: clock[0])
    log = logging.getLogger("aiokafka.client")
    for node in range(50):  # one template, different arguments: one kind of line
        log.error("Unable connect to node with id %s: %s", node, "refused")
    log.warning("Topic %s not found in cluster metadata", "t")  # another template passes
    clock[0] += 10.5
    log.error("Unable connect to node with id %s: %s", 99, "refused")
    events = lines(stream)
    assert [e["event"] for e in events] == [
        "Unable connect to node with id 0: refused",
        "Topic t not found in cluster metadata",
        "Unable connect to node with id 99: refused",
    ]
    assert "suppressed" not in events[0]
    assert events[2]["suppressed"] == 49


def test_quiet_foreign_logs_holds_records_back_for_the_caller() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, force=True)
    with quiet_foreign_logs() as held:
        logging.getLogger("aiokafka").error("Unable to bootstrap")
    assert held == ["Unable to bootstrap"]
    assert lines(stream) == []
    get_logger("test").info("own_events_still_flow")
    assert [e["event"] for e in lines(stream)] == ["own_events_still_flow"]


def test_tasks_started_while_quiet_log_normally_afterwards() -> None:
    # aiokafka's metadata task is created during bootstrap and inherits that context.
    import contextvars

    stream = io.StringIO()
    configure_logging(stream=stream, force=True)
    with quiet_foreign_logs():
        inherited = contextvars.copy_context()
    inherited.run(logging.getLogger("aiokafka.client").error, "Unable to update metadata")
    assert [e["event"] for e in lines(stream)] == ["Unable to update metadata"]


def test_reconfiguring_keeps_one_bridge() -> None:
    configure_logging(stream=io.StringIO(), force=True)
    configure_logging(stream=io.StringIO(), force=True)
    bridges = [h for h in logging.getLogger().handlers if isinstance(h, StdlibBridge)]
    assert len(bridges) == 1


# --- a consumer run outside `capgroup run` honours its log settings ------------------------

#: A service embedded in an application: ``BatchingConsumer.run()`` called directly, on the
#: scripted seam (no broker), stopped once its first assignment is applied.
_EMBEDDED = """
import sys, anyio, structlog
from functools import partial
from capgroup import Batch, BatchingConsumer
from tests.scripted import ScriptedCoordinator
from tests.scripted.runtime_clients import ScriptedClients

if sys.argv[1] == "app-configured":
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stdout))

class Service(BatchingConsumer):
    async def flush(self, batch: Batch) -> None:
        pass

async def main() -> None:
    coord = ScriptedCoordinator({"t": 1})
    service = Service(bootstrap_servers="scripted:9092", group_id="g", topics=["t"],
                      memory_budget_bytes=64 << 20, container_memory_limit_bytes=64 << 30,
                      log_level=sys.argv[2], log_format="json")
    async with anyio.create_task_group() as tg:
        await tg.start(partial(service.run, handle_signals=False,
                               clients=ScriptedClients(coord.transport())))
        service.stop()

anyio.run(main)
"""


@pytest.mark.parametrize("level", ["warning", "info"])
def test_an_embedded_consumer_logs_at_its_log_level_as_json_on_stderr(level: str) -> None:
    """Without ``capgroup run`` configuring logging first, structlog's defaults used to print
    every event (debug included) to stdout whatever ``log_level`` said."""
    done = subprocess.run(
        [sys.executable, "-c", _EMBEDDED, "default", level],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    assert done.stdout == ""
    events = [json.loads(line) for line in done.stderr.splitlines()]
    if level == "warning":
        assert all(e["level"] in ("warning", "error", "critical") for e in events), events
    else:
        assert "consumer_starting" in {e["event"] for e in events}, events


def test_an_application_s_own_structlog_configuration_is_left_alone() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _EMBEDDED, "app-configured", "warning"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    # The application's configuration (stdout, every level) still applies.
    assert "consumer_starting" in done.stdout
    assert "consumer_starting" not in done.stderr
