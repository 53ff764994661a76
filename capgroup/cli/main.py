"""Entry point of the ``capgroup`` command: sub-commands register themselves here."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from capgroup.settings import SettingsError

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_USAGE",
    "Handler",
    "build_parser",
    "main",
]

#: Exit code for usage and configuration errors (bad settings, bad scenario files).
EXIT_USAGE = 2
#: Exit code when stdout's reader went away (``capgroup plan ... | head``): the shell's status
#: for a process killed by SIGPIPE.
EXIT_BROKEN_PIPE = 141

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="capgroup",
        description="Kafka consumer groups that know their own limits.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from capgroup.cli import (
        config_cmd,
        demo_cmd,
        describe_cmd,
        doctor_cmd,
        hotkeys_cmd,
        kafka_cmd,
        plan_cmd,
        run_cmd,
    )

    config_cmd.register(sub)
    kafka_cmd.register(sub)
    demo_cmd.register(sub)
    describe_cmd.register(sub)
    doctor_cmd.register(sub)
    hotkeys_cmd.register(sub)
    plan_cmd.register(sub)
    run_cmd.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        code = handler(args)
        # Output still buffered is written now, while a closed pipe can be handled here.
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except SettingsError as exc:
        print(f"capgroup: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what is still buffered
    does not fail on the closed pipe again (the recipe of the ``signal`` module's docs)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no real file (e.g. replaced in a test)
        pass
    finally:
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
