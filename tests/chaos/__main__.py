"""``python -m tests.chaos --seed N --duration S [--soak] [--nodes 1|3] --report out.json``.

Starts a local Kafka (or uses ``--bootstrap``), runs the chaos schedule, writes the JSON report
and prints the summary; exits 1 when an invariant fails or was not checked.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio

from tests.chaos.driver import (
    FAULT_KINDS,
    ChaosConfig,
    range_jobs_config,
    relay_config,
    run_chaos,
    write_report,
)
from tests.chaos.invariants import check_all
from tests.chaos.logs import load_run
from tests.chaos.report import build_report


def recheck(run_dir: Path) -> dict[str, Any]:
    """The report of an existing run directory, judged by the current invariants."""
    data = load_run(run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    report = build_report(data, check_all(data), meta, wall_s=0.0)
    report["run_dir"] = str(run_dir)
    return report


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, report."""
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--seed", type=int, default=None, help="default 1 (range jobs: 14)")
    parser.add_argument("--duration", type=float, default=None, help="fault phase, seconds")
    parser.add_argument("--soak", action="store_true", help="long randomised schedule")
    parser.add_argument("--nodes", type=int, choices=(1, 3), default=1)
    parser.add_argument("--member", choices=("service", "engine"), default="service")
    parser.add_argument("--plant", default="", help="planted fault (tests only)")
    parser.add_argument("--faults", default="", help="comma-separated fault kinds, in order")
    parser.add_argument("--rate", type=float, default=150.0, help="records per second")
    parser.add_argument(
        "--relay",
        action="store_true",
        help="the relay schedule (hot + relay-only partition, relay on); "
        "--duration, --seed, --faults and --plant apply",
    )
    parser.add_argument(
        "--range-jobs",
        action="store_true",
        help="the range-jobs schedule (issue 14: a hot partition cut into range jobs, faults "
        "aimed at schedulers and workers mid-job); --seed, --faults and --plant apply, "
        "--duration when given",
    )
    parser.add_argument("--report", type=Path, default=Path("chaos-report.json"))
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument(
        "--recheck",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="judge an earlier run's logs again (no Kafka), e.g. after changing an invariant",
    )
    args = parser.parse_args(argv)
    duration_given = args.duration is not None
    seed_given = args.seed is not None
    if not seed_given:
        args.seed = 1
    if not duration_given:
        args.duration = 180.0
    if args.recheck is not None:
        report = recheck(args.recheck)
        write_report(report, args.report)
        return 0 if report["passed"] else 1
    faults = [f for f in args.faults.split(",") if f] or None
    if faults and not set(faults) <= set(FAULT_KINDS):
        parser.error(f"unknown fault kinds {sorted(set(faults) - set(FAULT_KINDS))}")
    if faults is None and not args.soak:
        cluster = "broker_restart" if args.nodes == 1 else "node_loss"
        faults = ["sigkill", "zombie", "join", "sigterm", "lower_budget", cluster, "sigkill"]
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix=f"chaos-{args.seed}-"))
    if args.range_jobs:
        explicit = [f for f in args.faults.split(",") if f]
        config = range_jobs_config(
            run_dir,
            plant=args.plant,
            **({"seed": args.seed} if seed_given else {}),
            **({"faults": explicit} if explicit else {}),
            **({"duration_s": args.duration} if duration_given else {}),
        )
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        report = anyio.run(run_chaos, config)
        report["run_dir"] = str(run_dir)
        write_report(report, args.report)
        return 0 if report["passed"] else 1
    if args.relay:
        relay_faults = [f for f in args.faults.split(",") if f]
        config = relay_config(
            run_dir,
            seed=args.seed,
            duration_s=args.duration,
            plant=args.plant,
            **({"faults": relay_faults} if relay_faults else {}),
        )
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        report = anyio.run(run_chaos, config)
        report["run_dir"] = str(run_dir)
        write_report(report, args.report)
        return 0 if report["passed"] else 1
    config = ChaosConfig(
        seed=args.seed,
        duration_s=args.duration,
        run_dir=run_dir,
        nodes=args.nodes,
        soak=args.soak,
        member_kind=args.member,
        plant=args.plant,
        faults=faults,
        rate=args.rate,
    )
    # SIGTERM must unwind like Ctrl-C, so the driver's cleanup reaps every member process
    # and broker it started instead of leaving them orphaned.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    report = anyio.run(run_chaos, config)
    report["run_dir"] = str(run_dir)
    write_report(report, args.report)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
