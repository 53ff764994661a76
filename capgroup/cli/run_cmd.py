"""``capgroup run package.module:ClassName``: run a BatchingConsumer subclass as a service.

Like ``uvicorn app:app``: the module is imported (the current directory is on the import path),
the class is instantiated with settings from ``CAPGROUP_*`` variables, and it runs until
SIGTERM/SIGINT, with the operations HTTP server beside it when ``CAPGROUP_HTTP_PORT`` is set
(:func:`~capgroup.operations.serve.run_with_operations`).

Logging is configured from the ``CAPGROUP_LOG_*`` settings before anything else runs, so every
line is JSON off a TTY. Exit codes (:mod:`capgroup.cli.startup_errors` maps errors to them,
each reported as one log line without a traceback): 0 after a graceful stop; 2 for a bad
target, invalid or missing settings, a topic of ``CAPGROUP_TOPICS`` that does not exist, or an
HTTP port that cannot be bound; 3 when the member cannot continue in its group (e.g. fenced by
another process with the same static id); 4 when no bootstrap server answered within
``CAPGROUP_BOOTSTRAP_TIMEOUT_MS``; 5 when authentication, authorization (ACLs) or TLS fails
(:mod:`capgroup.security`); 128 + signal number after a forced second signal; 1 for
anything unexpected (logged with its traceback).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
from typing import Any

import anyio
from pydantic import ValidationError

from capgroup.cli.startup_errors import (
    EXIT_GROUP_FATAL,
    EXIT_KAFKA_UNREACHABLE,
    EXIT_USAGE,
    TargetError,
    describe_startup_error,
)
from capgroup.errors import GroupFatalError
from capgroup.log import configure_logging, get_logger
from capgroup.operations.serve import run_with_operations
from capgroup.runtime.consumer import BatchingConsumer, ShutdownForcedError
from capgroup.security import EXIT_SECURITY, check_access, describe_connection_error
from capgroup.settings import CapgroupSettings

__all__ = [
    "EXIT_GROUP_FATAL",
    "EXIT_KAFKA_UNREACHABLE",
    "EXIT_USAGE",
    "TargetError",
    "configure_run_logging",
    "load_consumer_class",
    "register",
    "run",
]

_log = get_logger("cli.run")


def register(sub: Any) -> None:
    """Add the ``run`` sub-command."""
    parser = sub.add_parser(
        "run",
        help="run a BatchingConsumer subclass (package.module:ClassName) until SIGTERM/SIGINT",
    )
    parser.add_argument("target", metavar="MODULE:CLASS", help="e.g. myservice.archive:Archiver")
    parser.set_defaults(handler=run)


def load_consumer_class(target: str) -> type[BatchingConsumer]:
    """Import ``package.module:ClassName`` and check it is a concrete BatchingConsumer."""
    module_name, sep, class_name = target.partition(":")
    if not sep or not module_name or not class_name:
        raise TargetError(f"{target!r} is not MODULE:CLASS (e.g. myservice.archive:Archiver)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TargetError(f"cannot import module {module_name!r}: {exc}") from exc
    found: Any = module
    for part in class_name.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise TargetError(f"module {module_name!r} has no attribute {class_name!r}")
    if not (inspect.isclass(found) and issubclass(found, BatchingConsumer)):
        raise TargetError(f"{target!r} is not a subclass of capgroup.BatchingConsumer")
    if inspect.isabstract(found):
        missing = ", ".join(sorted(getattr(found, "__abstractmethods__", ())))
        raise TargetError(f"{target!r} does not implement {missing}")
    return found


def configure_run_logging() -> None:
    """Configure logging from ``CAPGROUP_LOG_LEVEL`` and ``CAPGROUP_LOG_FORMAT`` before
    anything logs; with invalid settings, the defaults (the error is reported once the
    consumer loads its settings)."""
    try:
        settings = CapgroupSettings()
    except ValidationError:
        configure_logging()
        return
    configure_logging(settings.log_level, settings.log_format)


def run(args: argparse.Namespace) -> int:
    """Run the consumer class named by ``args.target``; returns the exit code.

    Known errors (:func:`~capgroup.cli.startup_errors.describe_startup_error`) end the run with
    their exit code and one log line; anything else is logged with its traceback (exit 1).
    """
    configure_run_logging()
    consumer: BatchingConsumer | None = None
    try:
        cls = load_consumer_class(args.target)
        consumer = cls()
        if (line := check_access(consumer.settings)) is not None:
            return _security_failed(line)
        anyio.run(run_with_operations, consumer)
    except ShutdownForcedError as exc:
        print(
            f"capgroup run: {exc}; uncommitted work is re-read by the next owner", file=sys.stderr
        )
        return 128 + exc.signum
    except Exception as exc:
        line = None if consumer is None else describe_connection_error(exc, consumer.settings)
        if line is not None:
            return _security_failed(line)
        failure = describe_startup_error(exc)
        if failure is None:
            _log.exception("run_crashed", error=str(exc), error_type=type(exc).__name__)
            return 1
        _log.error(
            "consumer_fatal" if isinstance(exc, GroupFatalError) else "startup_failed",
            error=failure.message,
            error_type=type(exc).__name__,
            exit_code=failure.exit_code,
        )
        return failure.exit_code
    return 0


def _security_failed(line: str) -> int:
    """Report an authentication, authorization or TLS failure (one line, no secret)."""
    _log.error("startup_failed", error=line, error_type="security", exit_code=EXIT_SECURITY)
    return EXIT_SECURITY
