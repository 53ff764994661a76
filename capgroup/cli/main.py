"""Entry point of the ``capgroup`` command: sub-commands register themselves here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from capgroup.settings import SettingsError

__all__ = [
    "EXIT_USAGE",
    "Handler",
    "build_parser",
    "main",
]

#: Exit code for usage and configuration errors (bad settings, bad scenario files).
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="capgroup",
        description="Kafka consumer groups that know their own limits.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from capgroup.cli import config_cmd, demo_cmd, kafka_cmd, plan_cmd, run_cmd

    config_cmd.register(sub)
    kafka_cmd.register(sub)
    demo_cmd.register(sub)
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
        return handler(args)
    except SettingsError as exc:
        print(f"capgroup: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
