"""Structured logging for capgroup: one structlog configuration, events as JSON lines or console.

Every event carries ``group_id`` and ``member_id``; components bind them with
:func:`bind_member` (context variables, so each anyio task tree keeps its own values).

Records of the standard library's :mod:`logging` (aiokafka's among them) go through the same
renderer, so the stream stays JSON lines: they carry ``logger`` with the stdlib logger's name.
A burst of the same message (aiokafka repeats its connection errors while a broker is down)
is rate-limited: at most one line per logger and message template every
:data:`FOREIGN_LOG_INTERVAL_S` seconds, the next one carrying ``suppressed``, the number of
lines left out since the last.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator, MutableMapping
from contextvars import ContextVar
from typing import Any, TextIO

import structlog

__all__ = [
    "FOREIGN_LOG_INTERVAL_S",
    "StdlibBridge",
    "bind_member",
    "configure_logging",
    "configure_logging_for_service",
    "get_logger",
    "quiet_foreign_logs",
]

_configured = False

#: Shortest interval between two lines of one stdlib logger with the same message template.
FOREIGN_LOG_INTERVAL_S = 10.0


#: Set while capgroup reports a condition itself (bootstrap retries): stdlib records below
#: CRITICAL from that context are dropped, see :func:`quiet_foreign_logs`.
class _Held(list[str]):
    """Messages held back by :func:`quiet_foreign_logs`, while ``active``."""

    active = True


_quiet: ContextVar[_Held | None] = ContextVar("capgroup_quiet_foreign_logs", default=None)


@contextlib.contextmanager
def quiet_foreign_logs() -> Iterator[list[str]]:
    """Hold back other libraries' log records emitted from the current context (task) meanwhile;
    yields the list their messages are collected in.

    For code that logs one structured line per attempt itself (bootstrap retries), so that
    aiokafka's own lines for the same failure do not double it; the caller may quote them.
    Tasks started meanwhile inherit the context but log normally once the block is left.
    """
    held = _Held()
    token = _quiet.set(held)
    try:
        yield held
    finally:
        held.active = False
        _quiet.reset(token)


class StdlibBridge(logging.Handler):
    """Renders standard-library log records as capgroup structlog events, rate-limited.

    Installed on the root logger by :func:`configure_logging`.
    """

    def __init__(self, interval_s: float = FOREIGN_LOG_INTERVAL_S) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}
        self._lock_rate = threading.Lock()

    def _admit(self, record: logging.LogRecord) -> int | None:
        """None to drop the record; else how many of its kind were dropped before it."""
        key = (record.name, str(record.msg))
        now = time.monotonic()
        with self._lock_rate:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            self._last[key] = now
            if len(self._last) > 1024:  # forget old keys; messages are templates, few differ
                self._last = {k: v for k, v in self._last.items() if now - v < self.interval_s}
            return self._suppressed.pop(key, 0)

    def emit(self, record: logging.LogRecord) -> None:
        """Log ``record`` through structlog (unless rate-limited or quieted)."""
        try:
            held = _quiet.get()
            if held is not None and held.active and record.levelno < logging.CRITICAL:
                held.append(record.getMessage())
                return
            suppressed = self._admit(record)
            if suppressed is None:
                return
            fields: dict[str, Any] = {"logger": record.name}
            if suppressed:
                fields["suppressed"] = suppressed
            if record.exc_info and record.exc_info[0] is not None:
                fields["exc_info"] = record.exc_info
            logger = structlog.get_logger("capgroup", component="stdlib")
            logger.log(record.levelno, record.getMessage(), **fields)
        except Exception:
            self.handleError(record)


def configure_logging(
    level: str = "info", fmt: str = "auto", stream: TextIO | None = None, *, force: bool = False
) -> None:
    """Configure structlog once per process.

    ``fmt`` is ``"json"``, ``"console"`` or ``"auto"`` (console on a TTY, JSON lines otherwise).
    Later calls are ignored unless ``force`` is set, so libraries and tests can call it freely.
    """
    global _configured
    if _configured and not force:
        return
    out = stream if stream is not None else sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _default_identity,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    _install_stdlib_bridge(level)
    _configured = True


def configure_logging_for_service(level: str, fmt: str) -> None:
    """Configure logging from a member's settings (``CAPGROUP_LOG_LEVEL``, ``CAPGROUP_LOG_FORMAT``)
    unless the process has configured it already.

    Already configured means by :func:`configure_logging` (``capgroup run`` does that first) or
    by the application itself through ``structlog.configure``: an embedding service's own
    logging set-up is left alone. Without this, structlog's defaults would print every event,
    debug included, to stdout whatever ``log_level`` says.
    """
    if structlog.is_configured():
        return
    configure_logging(level, fmt, force=True)


def _install_stdlib_bridge(level: str) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, StdlibBridge)]:
        root.removeHandler(handler)
    root.addHandler(StdlibBridge())
    root.setLevel(logging.getLevelNamesMapping()[level.upper()])


def _default_identity(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event_dict.setdefault("group_id", None)
    event_dict.setdefault("member_id", None)
    return event_dict


def bind_member(group_id: str | None = None, member_id: str | None = None) -> None:
    """Bind the group and member identity to every event logged from the current context."""
    values = {k: v for k, v in (("group_id", group_id), ("member_id", member_id)) if v is not None}
    structlog.contextvars.bind_contextvars(**values)


def get_logger(component: str) -> Any:
    """Return a structlog logger whose events name ``component``.

    The logger stays lazy, so one created at import time follows a later
    :func:`configure_logging` (``.bind()`` on structlog's proxy would freeze the defaults).
    """
    return structlog.get_logger("capgroup", component=component)
