"""Time the capacity-aware assignor against Kafka's CooperativeStickyAssignor and round-robin.

    python benchmarks/bench_assignor.py            # full grid, median of 11 runs
    python benchmarks/bench_assignor.py --quick    # small grid, median of 3 (about a minute)
    python benchmarks/bench_assignor.py --only 100000x1000,1000000x2000
    python benchmarks/bench_assignor.py --plot benchmarks/assignor.png   # the issue's 3 sizes

For each (partitions, members) it times a fresh assignment and a rebalance after one member
of a stable assignment died, each on the same input in the same run:

Every Python timing is the median of timed calls, each right after a full collection
(``gc.collect()``), after untimed warm-up calls (at least 3, and for at least a second;
Java's are warmed for three seconds):

* **leader**: :func:`capgroup.assignor.adapter.plan_group` on every member's JoinGroup
  metadata bytes (encoded beforehand), so decoding the metadata, planning and encoding the
  assignments are all timed, as the group leader runs them. The partitions are what the
  leader holds from topic metadata, a :class:`~capgroup.assignor.model.PartitionTable` (a
  partition count per topic), built before the timing as the Java harness builds its
  ``Cluster``;
* **assign**: :func:`capgroup.assignor.balance.assign` alone, on decoded members;
* **gc ms**: garbage-collection time charged to the caller of the leader path, from
  ``gc.callbacks``: collections during the call and while the caller allocates right after
  (**gc after**: that last part, a collection the call put off);
* **rr**: a capacity-blind round-robin baseline (Kafka's RoundRobinAssignor: sorted
  partitions dealt to sorted members, no limits, no stickiness);
* **rates vs count** (``--rates`` only, printed after the table): the leader path on the
  same sizes with and without ingress rates, their calls alternating in one loop, and the
  ratio of the two medians (the issue's target: at most 3x);
* **core**: the header says whether the compiled core (``capgroup._native``) planned or
  the numpy path did (``CAPGROUP_ASSIGNOR_NATIVE=0``, or the extension not built);
* **java warm / java 1st**: Kafka's CooperativeStickyAssignor (kafka-clients 4.1.2, the
  ``benchmarks/java`` harness) in a fresh JVM per case: the median of timed calls after
  warm-up calls (at least 3 s of them), and the very first call of the JVM. ``--no-java``
  skips it, and it shows "n/a" with the reason when ``java`` or ``mvn`` is missing.

Each row also checks that the two assignors did comparable work: the partitions each moved
against the previous owners and the fewest and most partitions any member got. Inputs come
from ``capgroup.assignor.workloads``, the generator the large-input test also uses.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from java_assignor import (
    JavaResult,
    JavaUnavailableError,
    build_harness,
    java_version,
    run_group,
)

from capgroup.assignor import native
from capgroup.assignor.adapter import plan_group
from capgroup.assignor.balance import assign
from capgroup.assignor.model import MemberSpec, PartitionSpec, PartitionTable, Plan
from capgroup.assignor.workloads import (
    after_rebalance,
    synthetic_group,
    without_member,
)
from capgroup.log import configure_logging
from capgroup.protocol.capacity import encode_advertisement
from capgroup.protocol.consumer import encode_member_metadata
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
#: The sizes of issue 16, which ``--plot`` measures unless ``--only`` or ``--quick`` is given.
ISSUE = [(10_000, 100), (100_000, 1_000), (1_000_000, 2_000)]
#: Container objects the caller allocates (and holds) right after the leader path while
#: ``gc ms`` is still recording. More than the youngest generation's threshold (700), so a
#: collection the call put off is due within them; few enough that they cost next to nothing
#: alone (about 0.01 ms of GC here, against about 20 ms for 100,000, which would drown the
#: call's own share in a full collection of the benchmark's heap).
CALLER_ALLOCATIONS = 1_000
JAVA_WARMUP = 5
#: Untimed calls of each Python timing before its timed ones, as Java's are warmed: at least
#: :data:`WARMUP_CALLS`, and more (up to :data:`WARMUP_MAX_CALLS`) until
#: :data:`WARMUP_SECONDS` have passed. The first calls pay one-time costs a leader pays once
#: per process, not per rebalance (CPython 3.11 specialises a function's bytecode after its
#: first runs; the extension sets up its types on first use), and this VM runs the first
#: second of a measurement up to 1.7 times slower than the next ones (the pure-Python
#: round-robin of 10,000 partitions: 15 ms in the first second, 9 ms after it), which Java's
#: three seconds of warm-up never see. Every timed call still follows a full collection.
WARMUP_CALLS = 3
WARMUP_SECONDS = 1.0
WARMUP_MAX_CALLS = 200
#: Java warms up for at least this long as well: a few calls of a small group leave
#: ``assign()`` to the interpreter and C1 (10k partitions: 5.9 ms after 5 calls, 1.25 ms after
#: 200), which would flatter capgroup.
JAVA_WARMUP_SECONDS = 3.0


@dataclass
class Row:
    """One measured case; times in milliseconds, ``None`` where Java was not measured."""

    partitions: int
    members: int
    case: str
    leader_ms: float
    assign_ms: float
    gc_ms: float
    gc_after_ms: float
    peak_mib: float
    rr_ms: float
    moved: int
    pending: int
    min_per_member: int
    max_per_member: int
    java: JavaResult | None
    #: With ``--rates``: the leader path with and without ingress rates on the same sizes,
    #: their calls alternating, as (rates ms, count ms); None without ``--rates``.
    rates_vs_count: tuple[float, float] | None = None


class JavaSide:
    """The Java harness, or why there is none: the first failure turns the column off."""

    def __init__(self, jar: Path | None, workdir: Path) -> None:
        self.jar = jar
        self.workdir = workdir

    def run(
        self, members: Sequence[MemberSpec], partitions: Sequence[PartitionSpec], runs: int
    ) -> JavaResult | None:
        """Time Kafka's assignor on exactly this group, or None when Java is off."""
        if self.jar is None:
            return None
        try:
            return run_group(
                self.jar,
                members,
                partitions,
                self.workdir,
                warmup=JAVA_WARMUP,
                warmup_seconds=JAVA_WARMUP_SECONDS,
                runs=runs,
            )
        except JavaUnavailableError as exc:
            self.jar = None
            print(f"java: n/a from here on ({exc})", flush=True)
            return None


class GcClock:
    """Time spent in garbage collection while installed in ``gc.callbacks``: in all, and in
    collections that started after :meth:`mark` (the caller's share once the call returned)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.after_seconds = 0.0
        self._start = 0.0
        self._mark = float("inf")

    def mark(self) -> None:
        """Collections from now on count as after the call."""
        self._mark = time.perf_counter()

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        del info
        now = time.perf_counter()
        if phase == "start":
            self._start = now
            return
        self.seconds += now - self._start
        if self._start >= self._mark:
            self.after_seconds += now - self._start

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


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


def core_note() -> str:
    """Which path plans: the compiled core or the numpy one (and why)."""
    if native.enabled():
        return "compiled (capgroup._native)"
    if native.available():
        return f"numpy ({native.ENV}=0)"
    return "numpy (capgroup._native not built)"


def warm_up(fn: Callable[[], object]) -> None:
    """Untimed calls of ``fn``: see :data:`WARMUP_CALLS`."""
    until = time.perf_counter() + WARMUP_SECONDS
    calls = 0
    while calls < WARMUP_CALLS or (time.perf_counter() < until and calls < WARMUP_MAX_CALLS):
        fn()
        calls += 1


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    """Median wall time of ``runs`` calls, each after a full collection (after warm-up)."""
    warm_up(fn)
    times = []
    for _ in range(runs):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_medians(
    first: Callable[[], object], second: Callable[[], object], runs: int
) -> tuple[float, float]:
    """Median wall times of ``first`` and ``second``, their calls alternating (each after a
    full collection, after warm-up of both): a ratio of the two that the machine's load at
    the moment does not move."""
    warm_up(first)
    warm_up(second)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for fn, out in zip((first, second), times, strict=True):
            gc.collect()
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def timed_with_gc(fn: Callable[[], object], runs: int) -> tuple[float, float, float]:
    """Median wall time of ``fn`` (after warm-up), and the median GC time charged to its
    caller, in all and after the call returned, in seconds.

    GC time is what ``gc.callbacks`` saw from the call's start until the caller has allocated
    :data:`CALLER_ALLOCATIONS` containers after it, holding on to the result meanwhile: a
    collection the call put off (by disabling the collector, say) is paid there. The
    allocation after the call is not part of the wall time.
    """
    warm_up(fn)
    times = []
    paused = []
    after = []
    for _ in range(runs):
        gc.collect()
        with GcClock() as clock:
            start = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - start)
            clock.mark()
            caller: list[list[object]] = [[] for _ in range(CALLER_ALLOCATIONS)]
        paused.append(clock.seconds)
        after.append(clock.after_seconds)
        del result, caller
    return statistics.median(times), statistics.median(paused), statistics.median(after)


def peak_mib(fn: Callable[[], object]) -> float:
    """Peak memory traced by ``tracemalloc`` during one call, in MiB."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / (1 << 20)


def join_metadata(members: Sequence[MemberSpec]) -> list[tuple[str, str | None, bytes]]:
    """Each member's JoinGroup protocol metadata as the leader receives it."""
    return [
        (
            m.member_id,
            m.instance_id,
            encode_member_metadata(m.topics, encode_advertisement(m.capacity)),
        )
        for m in members
    ]


def spread(plan: Plan, members: Sequence[MemberSpec]) -> tuple[int, int]:
    """Fewest and most partitions assigned to a member in this round."""
    sizes = [len(plan.assignment.get(m.member_id, ())) for m in members]
    return min(sizes), max(sizes)


def measure(
    n_parts: int,
    n_members: int,
    *,
    runs: int,
    rates: bool,
    memory: bool,
    java_side: JavaSide,
) -> list[Row]:
    """Both cases of one size: fresh, and the stable result minus its middle member."""
    members, specs = synthetic_group(n_parts, n_members, seed=1, rates=rates)
    partitions = PartitionTable.of_specs(specs)
    survivors = without_member(
        after_rebalance(members, assign(members, partitions, 1), 1), n_members // 2
    )
    # With rates, the same sizes without them: the count path, timed side by side.
    counted: list[tuple[Sequence[tuple[str, str | None, bytes]], PartitionTable]] = []
    if rates:
        plain, plain_specs = synthetic_group(n_parts, n_members, seed=1, rates=False)
        plain_table = PartitionTable.of_specs(plain_specs)
        plain_survivors = without_member(
            after_rebalance(plain, assign(plain, plain_table, 1), 1), n_members // 2
        )
        counted = [
            (join_metadata(plain), plain_table),
            (join_metadata(plain_survivors), plain_table),
        ]
    rows = []
    for k, (case, group, generation) in enumerate(
        (("fresh", members, 1), ("remove1", survivors, 2))
    ):
        raw = join_metadata(group)

        def leader(
            raw: Sequence[tuple[str, str | None, bytes]] = raw,
            partitions: Sequence[PartitionSpec] = partitions,
            generation: int = generation,
        ) -> object:
            return plan_group(raw, partitions, generation)

        def ours(
            group: Sequence[MemberSpec] = group,
            partitions: Sequence[PartitionSpec] = partitions,
            generation: int = generation,
        ) -> object:
            return assign(group, partitions, generation)

        def baseline(
            group: Sequence[MemberSpec] = group,
            partitions: Sequence[PartitionSpec] = specs,
        ) -> object:
            return round_robin(group, partitions, 0)

        t_leader, t_gc, t_gc_after = timed_with_gc(leader, runs)
        rates_vs_count = None
        if counted:
            plain_raw, plain_table = counted[k]

            def count_leader(
                raw: Sequence[tuple[str, str | None, bytes]] = plain_raw,
                partitions: PartitionTable = plain_table,
                generation: int = generation,
            ) -> object:
                return plan_group(raw, partitions, generation)

            with_rates, without = paired_medians(leader, count_leader, runs)
            rates_vs_count = (with_rates * 1e3, without * 1e3)
        t_assign = median_seconds(ours, runs)
        t_rr = median_seconds(baseline, runs)
        peak = peak_mib(leader) if memory else float("nan")
        plan = plan_group(raw, partitions, generation).plan
        low, high = spread(plan, group)
        # Same members, same owned partitions and generations, same partitions.
        java = java_side.run(group, specs, runs)
        rows.append(
            Row(
                n_parts,
                n_members,
                case,
                t_leader * 1e3,
                t_assign * 1e3,
                t_gc * 1e3,
                t_gc_after * 1e3,
                peak,
                t_rr * 1e3,
                plan.moved,
                len(plan.pending),
                low,
                high,
                java,
                rates_vs_count,
            )
        )
    return rows


HEADER = (
    f"{'partitions':>10} {'members':>7} {'case':>7} {'leader ms':>10} {'assign ms':>10} "
    f"{'gc ms':>6} {'gc after':>8} {'peak MiB':>8} {'rr ms':>8} {'java warm':>9} {'java 1st':>9} "
    f"{'/java':>6} {'/rr':>5} {'moved':>15} {'min-max':>15}"
)


def format_row(row: Row) -> str:
    """One table line; ``moved`` and ``min-max`` read capgroup/java."""
    java = row.java
    warm = f"{java.median_ms:.1f}" if java else "n/a"
    first = f"{java.first_ms:.1f}" if java else "n/a"
    ratio = f"{row.leader_ms / java.median_ms:.2f}" if java else "n/a"
    moved = f"{row.moved:,}/{java.moved:,}" if java else f"{row.moved:,}"
    cg_spread = f"{row.min_per_member}-{row.max_per_member}"
    both = f"{cg_spread}/{java.min_per_member}-{java.max_per_member}" if java else cg_spread
    return (
        f"{row.partitions:>10,} {row.members:>7,} {row.case:>7} {row.leader_ms:>10.1f} "
        f"{row.assign_ms:>10.1f} {row.gc_ms:>6.1f} {row.gc_after_ms:>8.1f} "
        f"{row.peak_mib:>8.1f} {row.rr_ms:>8.1f} {warm:>9} {first:>9} {ratio:>6} "
        f"{row.leader_ms / row.rr_ms:>5.2f} {moved:>15} {both:>15}"
    )


def check_comparable(row: Row) -> str | None:
    """Why the Java figure of ``row`` is not a like-for-like comparison, if it is not."""
    java = row.java
    if java is None:
        return None
    problems = []
    if java.moved != row.moved:
        problems.append(f"moved {row.moved:,} (capgroup) vs {java.moved:,} (java)")
    if (java.min_per_member, java.max_per_member) != (row.min_per_member, row.max_per_member):
        problems.append(
            f"per member {row.min_per_member}-{row.max_per_member} (capgroup) vs "
            f"{java.min_per_member}-{java.max_per_member} (java)"
        )
    if java.withheld or row.pending:
        problems.append(f"withheld {row.pending:,} (capgroup) vs {java.withheld:,} (java)")
    if not problems:
        return None
    return f"{row.partitions:,}/{row.members:,} {row.case}: " + "; ".join(problems)


def parse_grid(text: str) -> list[tuple[int, int]]:
    """``"100000x1000,1000000x2000"`` as (partitions, members) pairs."""
    grid = []
    for pair in text.split(","):
        parts, members = pair.lower().split("x")
        grid.append((int(parts), int(members)))
    return grid


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark (see the module docstring)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small grid, 3 runs each")
    parser.add_argument("--runs", type=int, default=0, help="runs per timing (median)")
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc run")
    parser.add_argument("--rates", action="store_true", help="partitions carry ingress rates")
    parser.add_argument("--no-java", action="store_true", help="skip the Java columns")
    parser.add_argument(
        "--only", default="", help="comma-separated PARTITIONSxMEMBERS, e.g. 100000x1000"
    )
    parser.add_argument(
        "--plot",
        metavar="PATH",
        help="write a log-log PNG of time against partitions (needs the `plot` extra: "
        "matplotlib); without --only or --quick it measures the issue's sizes "
        "(10k/100, 100k/1,000, 1M/2,000)",
    )
    args = parser.parse_args(argv)
    # Fail before minutes of measuring, not after.
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib: pip install 'capgroup[plot]' (or matplotlib)")
    grid = QUICK if args.quick else ISSUE if args.plot else FULL
    if args.only:
        grid = parse_grid(args.only)
    # Eleven timed calls a median, both sides: at 10k partitions a call takes about a
    # millisecond, and this VM's noise moves single calls by a third.
    runs = args.runs or (3 if args.quick else 11)
    # The leader logs one line per plan; keep the table readable (warnings still show).
    configure_logging(level="warning", fmt="json", stream=sys.stderr, force=True)

    jar: Path | None = None
    if args.no_java:
        java_note = "java: n/a (--no-java)"
    else:
        try:
            jar = build_harness()
            java_note = (
                f"java: Kafka CooperativeStickyAssignor (kafka-clients 4.1.2) on "
                f"{java_version()}, a fresh JVM per case: warm = median of {runs} "
                f"assign() calls after at least {1 + JAVA_WARMUP} untimed ones and "
                f"{JAVA_WARMUP_SECONDS:g} s of them, 1st = the JVM's first call"
            )
        except JavaUnavailableError as exc:
            java_note = f"java: n/a ({exc})"
    rates = " with exponential ingress rates" if args.rates else ""
    print(f"python {sys.version.split()[0]}, median of {runs} runs{rates}")
    print(f"capgroup assignor core: {core_note()}")
    print(java_note)
    print(
        "leader = plan_group on JoinGroup metadata bytes (decode, assign, encode); gc ms = GC "
        "during it and while the caller allocates right after (gc after = that part); "
        "/java = leader / java warm; /rr = leader / rr; moved and min-max: capgroup/java"
    )
    print(HEADER)
    print("-" * len(HEADER))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="capgroup-bench-") as tmp:
        java_side = JavaSide(jar, Path(tmp))
        for n_parts, n_members in grid:
            measured = measure(
                n_parts,
                n_members,
                runs=runs,
                rates=args.rates,
                memory=not args.no_memory,
                java_side=java_side,
            )
            for row in measured:
                print(format_row(row), flush=True)
            rows += measured
    for row in rows:
        if row.rates_vs_count is not None:
            with_rates, without = row.rates_vs_count
            print(
                f"rates vs count path, side by side (alternating calls): {row.partitions:,}/"
                f"{row.members:,} {row.case} {with_rates:.1f} ms with rates, {without:.1f} ms "
                f"without: {with_rates / without:.2f}x"
            )
    for row in rows:
        if row.java is not None:
            print(
                f"java leader path (decode, assign, encode), warm: {row.partitions:,}/"
                f"{row.members:,} {row.case} {row.java.leader_median_ms:.1f} ms"
            )
    problems = [p for p in map(check_comparable, rows) if p]
    if any(row.java for row in rows):
        print("\n".join(problems) if problems else "same moves and balance for both assignors")
        if problems and args.rates:
            print("(expected with --rates: capgroup balances ingress load, Java counts partitions)")
    if args.plot:
        from plot_assignor import plot  # matplotlib only with --plot

        when = time.strftime("%Y-%m-%d", time.gmtime())
        plot(rows, Path(args.plot), title=f"median of {runs} runs{rates}, {when}")
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
