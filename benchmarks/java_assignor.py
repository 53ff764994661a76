"""Kafka's CooperativeStickyAssignor, timed in a JVM on the inputs bench_assignor.py times.

The harness is ``benchmarks/java`` (Maven, kafka-clients 4.1.2). :func:`build_harness` runs
``mvn -q package`` once and reuses ``benchmarks/java/target/assignor-bench.jar`` until the pom
or a source file is newer; :func:`write_group` writes one group in the harness's text format;
:func:`run_group` runs it in a fresh JVM and parses the JSON line the harness prints.

Anything that keeps Java from running (no ``java`` or ``mvn``, a failed build, a crash) raises
:class:`JavaUnavailableError` with a one-line reason, so that the benchmark can print "n/a".
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from capgroup.assignor.model import MemberSpec, PartitionSpec

__all__ = ["JavaResult", "JavaUnavailableError", "build_harness", "java_version", "run_group"]

JAVA_DIR = Path(__file__).resolve().parent / "java"
JAR = JAVA_DIR / "target" / "assignor-bench.jar"
#: Generation Kafka's consumer sends while it owns nothing (``DEFAULT_GENERATION``).
NO_GENERATION = -1


class JavaUnavailableError(Exception):
    """Java cannot be measured here; ``str(exc)`` says why in one line."""


@dataclass(frozen=True, slots=True)
class JavaResult:
    """What the harness measured for one group (times in milliseconds)."""

    #: The first ``assign`` call of a fresh JVM.
    first_ms: float
    #: Median of the timed ``assign`` calls after the warm-up calls.
    median_ms: float
    #: Median of the warm leader path: decode the subscriptions, assign, encode.
    leader_median_ms: float
    runs_ms: tuple[float, ...]
    #: Partitions whose holder is not their owner in the input (withheld ones included).
    moved: int
    #: Partitions revoked from a live owner and given to nobody this round (cooperative).
    withheld: int
    min_per_member: int
    max_per_member: int
    assigned: int
    #: How many untimed calls warmed the JIT before the timed ones.
    warmup_calls: int
    kafka_clients: str


def build_harness(*, force: bool = False) -> Path:
    """The harness jar, built with ``mvn -q package`` unless it is newer than its sources."""
    if shutil.which("java") is None:
        raise JavaUnavailableError("no `java` on PATH (Java 17+ is needed for the Java column)")
    sources = [JAVA_DIR / "pom.xml", *JAVA_DIR.glob("src/**/*.java")]
    if not force and JAR.exists():
        built = JAR.stat().st_mtime
        if all(src.stat().st_mtime <= built for src in sources):
            return JAR
    mvn = shutil.which("mvn")
    if mvn is None:
        raise JavaUnavailableError("no `mvn` on PATH to build benchmarks/java (Maven 3.8+)")
    try:
        done = subprocess.run(
            [mvn, "-B", "-q", "package"],
            cwd=JAVA_DIR,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise JavaUnavailableError("`mvn -q package` in benchmarks/java took over 15 min") from None
    if done.returncode != 0 or not JAR.exists():
        raise JavaUnavailableError(
            f"`mvn -q package` in benchmarks/java failed: {_last_line(done)}"
        )
    return JAR


def java_version() -> str:
    """``java -version``'s first line (the runtime that times the Java column)."""
    done = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    lines = (done.stderr or done.stdout).splitlines()
    return lines[0].strip() if lines else "unknown java"


def write_group(
    path: Path, members: Sequence[MemberSpec], partitions: Sequence[PartitionSpec]
) -> None:
    """Write a group in the harness's input format (see ``AssignorBench.java``).

    Every member must subscribe to every topic (as ``synthetic_group`` makes them) and each
    topic's partitions must be numbered 0..n-1: the format has no room for anything else. A
    member's generation is the newest one among its owned partitions, ``-1`` when it owns none.
    """
    numbers: dict[str, set[int]] = {}
    for p in partitions:
        numbers.setdefault(p.topic, set()).add(p.partition)
    counts = {topic: len(found) for topic, found in numbers.items()}
    topics = list(counts)
    for topic, found in numbers.items():
        if found != set(range(len(found))):
            raise ValueError(f"partitions of {topic!r} are not numbered 0..{len(found) - 1}")
    index = {topic: k for k, topic in enumerate(topics)}
    lines = ["capgroup-assignor-bench 1", f"topics {len(topics)}"]
    lines += [f"{topic} {counts[topic]}" for topic in topics]
    lines.append(f"members {len(members)}")
    for m in members:
        if m.topics != frozenset(topics):
            raise ValueError(f"{m.member_id} does not subscribe to every topic")
        owned = m.capacity.owned
        generation = max((op.generation for op in owned), default=NO_GENERATION)
        tokens = " ".join(f"{index[op.topic]}:{op.partition}" for op in owned)
        lines.append(f"{m.member_id} {generation} {len(owned)} {tokens}".rstrip())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_group(
    jar: Path,
    members: Sequence[MemberSpec],
    partitions: Sequence[PartitionSpec],
    workdir: Path,
    *,
    warmup: int,
    runs: int,
    warmup_seconds: float = 0.0,
    timeout: float = 1800.0,
) -> JavaResult:
    """Time the group in a fresh JVM: its first call, then ``runs`` calls after at least
    ``warmup`` calls and ``warmup_seconds`` of warm-up (and as much for the leader path)."""
    case = workdir / "group.txt"
    write_group(case, members, partitions)
    try:
        done = subprocess.run(
            [
                "java",
                "-jar",
                str(jar),
                "--warmup",
                str(warmup),
                "--warmup-seconds",
                str(warmup_seconds),
                "--runs",
                str(runs),
                str(case),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise JavaUnavailableError(f"the Java harness took over {timeout:.0f} s") from None
    finally:
        case.unlink(missing_ok=True)
    if done.returncode != 0:
        raise JavaUnavailableError(f"the Java harness failed: {_last_line(done)}")
    try:
        out = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise JavaUnavailableError(
            f"the Java harness printed no result: {_last_line(done)}"
        ) from None
    return JavaResult(
        first_ms=out["first_ms"],
        median_ms=out["median_ms"],
        leader_median_ms=out["leader_median_ms"],
        runs_ms=tuple(out["runs_ms"]),
        moved=out["moved"],
        withheld=out["withheld"],
        min_per_member=out["min"],
        max_per_member=out["max"],
        assigned=out["assigned"],
        warmup_calls=out["warmup_calls"],
        kafka_clients=out["kafka_clients"],
    )


def _last_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else f"exit status {done.returncode}"
