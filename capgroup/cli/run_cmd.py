"""``capgroup run package.module:ClassName``: run a BatchingConsumer subclass as a service.

Like ``uvicorn app:app``: the module is imported (the current directory is on the import path),
the class is instantiated with settings from ``CAPGROUP_*`` variables, and it runs until
SIGTERM/SIGINT, with the operations HTTP server beside it when ``CAPGROUP_HTTP_PORT`` is set
(:func:`~capgroup.operations.serve.run_with_operations`). Exit codes: 0 after a graceful stop,
2 for a bad target or invalid settings (an HTTP port that cannot be bound included), 3 when the
member cannot continue in its group (e.g. fenced by another process with the same static id),
128 + signal number after a forced second signal, 1 for anything unexpected.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
from typing import Any

import anyio

from capgroup.errors import GroupFatalError
from capgroup.log import configure_logging, get_logger
from capgroup.operations.serve import run_with_operations
from capgroup.runtime.consumer import BatchingConsumer, ShutdownForcedError

__all__ = [
    "EXIT_GROUP_FATAL",
    "EXIT_USAGE",
    "TargetError",
    "load_consumer_class",
    "register",
    "run",
]

#: Same values as :mod:`capgroup.cli.main`; not imported to avoid a cycle.
EXIT_USAGE = 2
#: The member cannot continue in its group.
EXIT_GROUP_FATAL = 3

_log = get_logger("cli.run")


class TargetError(ValueError):
    """``module:Class`` does not name a runnable BatchingConsumer subclass."""


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


def run(args: argparse.Namespace) -> int:
    """Run the consumer class named by ``args.target``; returns the exit code.

    A :class:`~capgroup.SettingsError` raised while building the consumer propagates to the
    CLI entry point, which prints it and exits 2.
    """
    try:
        cls = load_consumer_class(args.target)
    except TargetError as exc:
        print(f"capgroup run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    consumer = cls()
    configure_logging(consumer.settings.log_level, consumer.settings.log_format)
    try:
        anyio.run(run_with_operations, consumer)
    except ShutdownForcedError as exc:
        print(
            f"capgroup run: {exc}; uncommitted work is re-read by the next owner", file=sys.stderr
        )
        return 128 + exc.signum
    except GroupFatalError as exc:
        _log.error("consumer_fatal", error=str(exc), error_type=type(exc).__name__)
        print(f"capgroup run: {exc}", file=sys.stderr)
        return EXIT_GROUP_FATAL
    return 0
