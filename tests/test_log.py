"""Logging: JSON lines off a TTY, console on a TTY, group and member ids on every event."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from capgroup.log import bind_member, configure_logging, get_logger


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def fresh_context() -> Iterator[None]:
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


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
