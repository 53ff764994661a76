"""How ``capgroup run`` reports an error that ends the process: an exit code and one line.

:func:`describe_startup_error` is the one table of known errors. An error it describes ends the
run with its exit code and a single ``startup_failed`` log line (JSON off a TTY) carrying the
message, never a traceback; anything else is a bug and is logged with its traceback (exit 1).

To report a new kind of error (a missing dead-letter topic, a TLS handshake failure), raise an
exception whose message names the setting and the remedy, and add a case below (a
:class:`~capgroup.SettingsError` subclass needs none: it exits 2).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from capgroup.errors import GroupFatalError
from capgroup.membership.transport import KafkaUnreachableError
from capgroup.operations.describe import GroupNotFoundError
from capgroup.security import EXIT_SECURITY, check_access, describe_connection_error
from capgroup.settings import CapgroupSettings, SettingsError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "EXIT_GROUP_FATAL",
    "EXIT_KAFKA_UNREACHABLE",
    "EXIT_USAGE",
    "StartupFailure",
    "TargetError",
    "add_timeout_argument",
    "describe_startup_error",
    "one_line",
    "report_failure",
]

#: How long the inspection commands (describe, doctor, hotkeys) try to reach Kafka.
DEFAULT_TIMEOUT_S = 10.0

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


def add_timeout_argument(parser: argparse.ArgumentParser) -> None:
    """``--timeout SECONDS`` of the commands that inspect a cluster (describe, doctor,
    hotkeys): how long they try to reach Kafka before giving up with exit 4."""
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"give up reaching Kafka after SECONDS (default {DEFAULT_TIMEOUT_S:g})",
    )


def _positive_seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def report_failure(command: str, exc: Exception, settings: CapgroupSettings) -> int:
    """One line on stderr naming ``capgroup COMMAND`` and the exit code, for the errors an
    operator can fix (security first: a TLS or SASL failure also looks like a connection
    error); anything else is a bug and is raised."""
    line = describe_connection_error(exc, settings)
    if line is not None:
        print(f"capgroup {command}: {line}", file=sys.stderr)
        return EXIT_SECURITY
    failure = describe_startup_error(exc)
    if failure is None:
        raise exc
    if failure.exit_code == EXIT_KAFKA_UNREACHABLE:
        # aiokafka reports a refused login, an untrusted certificate or a protocol mismatch
        # only as "unable to bootstrap": one direct probe tells them from a broker that is down.
        diagnosis = check_access(settings)
        if diagnosis is not None:
            print(f"capgroup {command}: {diagnosis}", file=sys.stderr)
            return EXIT_SECURITY
    print(f"capgroup {command}: {failure.message}", file=sys.stderr)
    return failure.exit_code
