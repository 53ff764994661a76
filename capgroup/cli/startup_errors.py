"""How ``capgroup run`` reports an error that ends the process: an exit code and one line.

:func:`describe_startup_error` is the one table of known errors. An error it describes ends the
run with its exit code and a single ``startup_failed`` log line (JSON off a TTY) carrying the
message, never a traceback; anything else is a bug and is logged with its traceback (exit 1).

To report a new kind of error (a missing dead-letter topic, a TLS handshake failure), raise an
exception whose message names the setting and the remedy, and add a case below (a
:class:`~capgroup.SettingsError` subclass needs none: it exits 2).
"""

from __future__ import annotations

from dataclasses import dataclass

from capgroup.errors import GroupFatalError
from capgroup.membership.transport import KafkaUnreachableError
from capgroup.operations.describe import GroupNotFoundError
from capgroup.settings import SettingsError

__all__ = [
    "EXIT_GROUP_FATAL",
    "EXIT_KAFKA_UNREACHABLE",
    "EXIT_USAGE",
    "StartupFailure",
    "TargetError",
    "describe_startup_error",
    "one_line",
]

#: A bad target, invalid or missing settings, a topic that does not exist, an HTTP port that
#: cannot be bound, a group ``capgroup describe`` cannot find.
EXIT_USAGE = 2
#: The member cannot continue in its group (e.g. fenced by a twin with its static id).
EXIT_GROUP_FATAL = 3
#: No bootstrap server answered within ``CAPGROUP_BOOTSTRAP_TIMEOUT_MS`` at start-up.
EXIT_KAFKA_UNREACHABLE = 4


class TargetError(ValueError):
    """``module:Class`` does not name a runnable BatchingConsumer subclass."""


@dataclass(frozen=True)
class StartupFailure:
    """How the process ends: the exit code and the message of its one line."""

    exit_code: int
    message: str


def one_line(text: str) -> str:
    """``text`` with its lines joined by ``"; "`` (settings errors list one problem a line)."""
    parts = [part.strip().removeprefix("- ") for part in text.splitlines()]
    parts = [part for part in parts if part]
    if len(parts) > 1 and parts[0].endswith(":"):
        return f"{parts[0]} {'; '.join(parts[1:])}"
    return "; ".join(parts)


def describe_startup_error(exc: BaseException) -> StartupFailure | None:
    """The exit code and message for ``exc``, or None when it is not a known failure."""
    if isinstance(exc, KafkaUnreachableError):
        return StartupFailure(EXIT_KAFKA_UNREACHABLE, str(exc))
    if isinstance(exc, SettingsError | TargetError | GroupNotFoundError):
        return StartupFailure(EXIT_USAGE, one_line(str(exc)))
    if isinstance(exc, GroupFatalError):
        return StartupFailure(EXIT_GROUP_FATAL, one_line(str(exc)))
    return None
