"""``capgroup doctor [--group G ...] [--topic T ...] [--json] [--fail-on warn|error]``: the
configuration traps of the cluster, each with the arithmetic behind it and the fix.

Checks (stable ids): offsets-retention, segment-retention, unclean-leader-election,
min-insync-replicas, partition-count (with ``--target-throughput``), range-assignor-imbalance,
lag-vs-retention, capacity-headroom, producer-durability. Connection settings (bootstrap
servers, TLS, SASL) are the members' ``CAPGROUP_*`` settings.

Exit codes: 0 when no finding is at or above ``--fail-on`` (default ``error``), 1 when one
is; 2 for bad arguments or settings or a named group that does not exist; 4 when Kafka
cannot be reached; 5 when authentication, authorization or TLS fails.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import anyio

from capgroup.cli.startup_errors import add_timeout_argument, report_failure
from capgroup.log import configure_logging
from capgroup.operations.doctor import SEVERITIES, Finding, Severity, at_or_above
from capgroup.operations.doctor_gather import DEFAULT_SAMPLE_SECONDS, DoctorReport, run_doctor
from capgroup.settings import load_settings

__all__ = ["EXIT_FINDINGS", "JSON_VERSION", "doctor_json", "exit_code", "register", "render", "run"]

#: Exit code when a finding is at or above ``--fail-on``.
EXIT_FINDINGS = 1
#: Version of the ``--json`` document's shape.
JSON_VERSION = 1


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def register(sub: Any) -> None:
    """Add the ``doctor`` sub-command."""
    parser = sub.add_parser(
        "doctor",
        help="check the cluster, topics and groups for configuration traps",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument(
        "--group", action="append", default=[], help="a group to check (repeatable; default all)"
    )
    parser.add_argument(
        "--topic", action="append", default=[], help="a topic to check (repeatable; default all)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--fail-on",
        choices=("warn", "error"),
        default="error",
        help="exit 1 when a finding is at or above this severity (default error)",
    )
    parser.add_argument(
        "--sample-seconds",
        type=_non_negative,
        default=DEFAULT_SAMPLE_SECONDS,
        metavar="S",
        help=f"window for produce and consume rates (default {DEFAULT_SAMPLE_SECONDS:g})",
    )
    parser.add_argument(
        "--target-throughput",
        type=_positive,
        metavar="RECORDS_PER_S",
        help="check partition counts against this throughput per topic",
    )
    parser.add_argument(
        "--produce-rate",
        type=_positive,
        metavar="RECORDS_PER_S",
        help="per-partition produce rate for partition-count (default: the measured maximum)",
    )
    parser.add_argument(
        "--consume-rate",
        type=_positive,
        metavar="RECORDS_PER_S",
        help="per-partition consume rate for partition-count (default: the measured maximum)",
    )
    add_timeout_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Gather, check, print; returns the exit code."""
    configure_logging("error")
    settings = load_settings(bootstrap_timeout_ms=max(1000, int(args.timeout * 1000)))
    try:
        report = anyio.run(
            lambda: run_doctor(
                settings,
                groups=args.group,
                topics=args.topic,
                sample_seconds=args.sample_seconds,
                target_throughput=args.target_throughput,
                produce_rate=args.produce_rate,
                consume_rate=args.consume_rate,
            )
        )
    except Exception as exc:
        return report_failure("doctor", exc, settings)
    print(
        json.dumps(doctor_json(report), indent=2, sort_keys=True) if args.json else render(report)
    )
    return exit_code(report.findings, args.fail_on)


def exit_code(findings: list[Finding], fail_on: str) -> int:
    """0, or :data:`EXIT_FINDINGS` when a finding is at or above ``fail_on``."""
    threshold: Severity = "error" if fail_on == "error" else "warn"
    return EXIT_FINDINGS if any(at_or_above(f.severity, threshold) for f in findings) else 0


def doctor_json(report: DoctorReport) -> dict[str, Any]:
    """The report as a JSON-ready document (the README's "capgroup doctor" section)."""
    summary = {s: sum(1 for f in report.findings if f.severity == s) for s in SEVERITIES}
    return {
        "version": JSON_VERSION,
        "checked": {
            "brokers": list(report.brokers),
            "topics": list(report.topics),
            "groups": list(report.groups),
            "sample_seconds": report.sample_seconds,
        },
        "summary": summary,
        "findings": [f.to_json() for f in report.findings],
    }


def render(report: DoctorReport) -> str:
    """The report as text: one block per finding, most severe first, and a summary line."""
    lines: list[str] = []
    for f in report.findings:
        lines.append(f"{f.severity.upper():5}  {f.check}  {f.subject}: {f.message}")
        for key in sorted(f.evidence):
            lines.append(f"       {key} = {json.dumps(f.evidence[key], sort_keys=True)}")
        lines.append(f"       fix: {f.fix}")
    counts = {s: sum(1 for f in report.findings if f.severity == s) for s in SEVERITIES}
    lines.append(
        f"checked {len(report.brokers)} brokers, {len(report.topics)} topics, "
        f"{len(report.groups)} groups: {counts['error']} errors, {counts['warn']} warnings, "
        f"{counts['info']} info"
    )
    return "\n".join(lines)
