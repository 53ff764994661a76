"""Structured logging for capgroup: one structlog configuration, events as JSON lines or console.

Every event carries ``group_id`` and ``member_id``; components bind them with
:func:`bind_member` (context variables, so each anyio task tree keeps its own values).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

__all__ = [
    "bind_member",
    "configure_logging",
    "get_logger",
]

_configured = False


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
    _configured = True


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
