"""Time the capacity-aware assignor against a capacity-blind round-robin baseline.

    python benchmarks/bench_assignor.py            # full grid, median of 5 runs
    python benchmarks/bench_assignor.py --quick    # small grid, median of 3 (< 1 minute)

For each (partitions, members) it times a fresh assignment and a rebalance after one
member of a stable assignment died, reports the median, the peak traced memory of one
extra run (tracemalloc), and the ratio to a round-robin baseline (Kafka's
RoundRobinAssignor: sorted partitions dealt to sorted members, no limits, no stickiness)
timed side by side on the same input in the same process. Inputs come from
``capgroup.assignor.workloads``, the generator the large-input test also uses.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from capgroup.assignor.balance import assign
from capgroup.assignor.model import MemberSpec, PartitionSpec
from capgroup.assignor.workloads import (
    after_rebalance,
    synthetic_group,
    without_member,
)
from capgroup.types import TopicPartition

FULL = [
    (1_000, 10),
    (1_000, 100),
    (10_000, 10),
    (10_000, 100),
    (10_000, 1_000),
    (100_000, 100),
    (100_000, 1_000),
    (100_000, 2_000),
    (1_000_000, 1_000),
    (1_000_000, 2_000),
]
QUICK = [(1_000, 10), (10_000, 100), (100_000, 1_000)]
REFERENCES = (
    "reference points (their hardware, 1M partitions / 2,000 members): "
    "Java CooperativeStickyAssignor ~1.4 s, franz-go sticky ~0.16 s; "
    "our targets: <= 3 s for 1M/2,000 and <= 150 ms for 100k/1,000"
)


def round_robin(
    members: Sequence[MemberSpec], partitions: Sequence[PartitionSpec], generation: int
) -> dict[str, list[TopicPartition]]:
    """Capacity-blind baseline: deal sorted partitions to sorted subscribers in turn."""
    del generation
    ordered = sorted(members, key=lambda m: m.member_id)
    out: dict[str, list[TopicPartition]] = {m.member_id: [] for m in ordered}
    turn = 0
    for p in sorted(partitions, key=lambda p: (p.topic, p.partition)):
        for _ in range(len(ordered)):
            m = ordered[turn % len(ordered)]
            turn += 1
            if p.topic in m.topics:
                out[m.member_id].append(TopicPartition(p.topic, p.partition))
                break
    return out


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_mib(fn: Callable[[], object]) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / (1 << 20)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small grid, 3 runs each")
    parser.add_argument("--runs", type=int, default=0, help="runs per timing (median)")
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc run")
    parser.add_argument("--rates", action="store_true", help="partitions carry ingress rates")
    parser.add_argument(
        "--only", default="", help="comma-separated PARTITIONSxMEMBERS, e.g. 100000x1000"
    )
    args = parser.parse_args(argv)
    grid = QUICK if args.quick else FULL
    if args.only:
        grid = [tuple(map(int, pair.split("x"))) for pair in args.only.split(",")]  # type: ignore[misc]
    runs = args.runs or (3 if args.quick else 5)
    rates = " with exponential ingress rates" if args.rates else ""
    print(f"python {sys.version.split()[0]}, median of {runs} runs{rates}")
    print(REFERENCES)
    header = (
        f"{'partitions':>10} {'members':>7} {'case':>7} {'median ms':>10} "
        f"{'peak MiB':>9} {'rr ms':>8} {'ratio':>6} {'moved':>6}"
    )
    print(header)
    print("-" * len(header))
    for n_parts, n_members in grid:
        members, partitions = synthetic_group(n_parts, n_members, seed=1, rates=args.rates)
        fresh = assign(members, partitions, 1)
        survivors = without_member(after_rebalance(members, fresh, 1), n_members // 2)
        for case, group, generation in (("fresh", members, 1), ("remove1", survivors, 2)):

            def ours(
                group: Sequence[MemberSpec] = group,
                partitions: Sequence[PartitionSpec] = partitions,
                generation: int = generation,
            ) -> object:
                return assign(group, partitions, generation)

            def baseline(
                group: Sequence[MemberSpec] = group,
                partitions: Sequence[PartitionSpec] = partitions,
            ) -> object:
                return round_robin(group, partitions, 0)

            t_ours = median_seconds(ours, runs)
            t_rr = median_seconds(baseline, runs)
            peak = float("nan") if args.no_memory else peak_mib(ours)
            moved = assign(group, partitions, generation).moved
            print(
                f"{n_parts:>10,} {n_members:>7,} {case:>7} {t_ours * 1e3:>10.1f} "
                f"{peak:>9.1f} {t_rr * 1e3:>8.1f} {t_ours / t_rr:>6.2f} {moved:>6,}",
                flush=True,
            )


if __name__ == "__main__":
    main()
