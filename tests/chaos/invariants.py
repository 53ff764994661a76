"""The chaos suite's invariants: pure functions over what a run left behind.

Every function takes a :class:`RunData` (parsed sink rows, audit events, producer acks, final
committed offsets, the driver's fault and process logs) and returns a :class:`Verdict` with the
smallest evidence that explains a failure. Nothing here touches Kafka, files or the clock, so
``test_invariants.py`` can feed each one a small synthetic run with a planted violation.

Log shapes (JSON lines; see ``service.py`` and ``driver.py`` for the writers):

* sink row: ``{"t", "member", "inc", "gen", "topic", "p", "o"}`` -- one per flushed record;
  a relayed copy also carries ``"origin": [topic, p, o]`` and ``"hops"`` (its
  ``capgroup.relay.*`` headers); a range job's record carries ``"job": [start, end,
  attempt]``, ``"assigned_t"`` (when its scheduler assigned the attempt) and ``"sched"`` (that
  scheduler's member);
* audit event: ``{"kind", "t", "member", "inc", ...}`` with kinds ``start``, ``assign``,
  ``revoke``, ``lost``, ``stop`` (graceful shutdown done: owns nothing from here),
  ``commit``, ``discard``, ``rss`` and ``relay`` (``on_records_relayed``: after the produce
  acknowledgement, before the commit; ``"relayed": [[topic, p, o, dest_topic, dest_p, hops,
  up], ...]`` with ``up`` the relayed record's own ``capgroup.relay.origin`` (``[topic, p,
  o]``, ``null`` for a produced record), ``"owned"``: the member's partitions then);
  range-jobs runs add ``rj_take`` (a scheduler takes a partition over: ``"p"``,
  ``"committed"``, ``"metadata"``, ``"known"`` finished ranges), ``rj_drop``, ``job_start`` and
  ``job_end``; a commit of range jobs carries ``"metadata": [[topic, p, text], ...]``;
* producer ack: ``{"seq", "p", "o", "t"}``;
* fault: ``{"kind", "t", "t_end", "member", ...}``; zombies carry ``t_stop`` and ``t_cont``;
* incarnation: ``{"member", "inc", "pid", "start_t", "end_t", "max_partitions", "budget"}``.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from capgroup.protocol.completed_ranges import decode_completed

Event = dict[str, Any]

#: Faults that may, by design, cost the records a member had flushed but not yet committed.
HARD_FAULTS = frozenset({"sigkill", "zombie", "broker_restart", "node_loss"})
#: Faults that hit every member at once (the cluster, not one process).
CLUSTER_FAULTS = frozenset({"broker_restart", "node_loss"})


@dataclass(frozen=True)
class Limits:
    """Bounds the invariants hold a run to; the report prints them next to the verdicts."""

    session_timeout_s: float
    #: Added to the session timeout for invariant 6 (the issue's "+ 5 s").
    recovery_slack_s: float = 5.0
    #: A record reaches the sink only when its batch flushes, so consumption is seen up to
    #: one batch age late.
    batch_age_s: float = 1.0
    #: RSS a member may use beyond its budget: interpreter, aiokafka, sockets, fetch buffers
    #: in flight (measured idle RSS of the service is about 60-70 MB; see docs/reliability.md).
    rss_overhead_bytes: int = 160 * 1024 * 1024
    #: Clock and logging slack when comparing timestamps written by different processes.
    clock_slack_s: float = 0.5
    #: How long a woken zombie may go on believing it owns its old partitions.
    wake_grace_s: float = 3.0
    #: How long partitions may stay unassigned while capacity suffices: a two-phase hand-off
    #: takes two rebalances, each of which may wait up to the rebalance timeout for members.
    unassigned_grace_s: float = 20.0
    #: ``CAPGROUP_RELAY_MAX_HOPS`` of a relay run; 0: relay off (the relay invariants are not
    #: part of :func:`check_all`).
    relay_max_hops: int = 0
    #: A range-jobs run (issue 14): invariant 10 is part of :func:`check_all`.
    range_jobs: bool = False


@dataclass
class RunData:
    """Everything a run left behind, parsed; the invariants' only input."""

    topic: str
    partitions: int
    limits: Limits
    sinks: list[Event] = field(default_factory=list)
    audits: list[Event] = field(default_factory=list)
    produced: list[Event] = field(default_factory=list)
    committed: dict[int, int | None] = field(default_factory=dict)
    faults: list[Event] = field(default_factory=list)
    incarnations: list[Event] = field(default_factory=list)
    end_t: float = 0.0


@dataclass
class Verdict:
    """The outcome of one invariant: passed or not, how much was checked, and evidence."""

    number: int
    name: str
    passed: bool
    checked: int
    summary: str
    evidence: list[Any] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def skipped(self) -> bool:
        """Nothing was there to check (e.g. no zombie in the schedule): not a pass."""
        return self.checked == 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "number": self.number,
            "name": self.name,
            "passed": self.passed,
            "skipped": self.skipped,
            "checked": self.checked,
            "summary": self.summary,
            "evidence": self.evidence,
            "figures": self.figures,
        }


# ------------------------------------------------------------------ helpers ---------


def ranges(offsets: Iterable[int], limit: int = 10) -> list[str]:
    """Compress offsets into ``"a-b"`` ranges (at most ``limit`` of them) for evidence."""
    out: list[str] = []
    run: list[int] = []
    for o in sorted(set(offsets)):
        if run and o == run[-1] + 1:
            run.append(o)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [o]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return out[:limit] + ([f"... {len(out) - limit} more ranges"] if len(out) > limit else [])


def _of(audits: Iterable[Event], kind: str) -> list[Event]:
    return [e for e in audits if e["kind"] == kind]


def _key(e: Event) -> tuple[str, int]:
    return (e["member"], e["inc"])


def incarnation_ends(data: RunData) -> dict[tuple[str, int], float]:
    """When each member process ended: the driver's reaping time, else the run's end."""
    ends: dict[tuple[str, int], float] = {}
    for inc in data.incarnations:
        end = inc.get("end_t")
        ends[(inc["member"], inc["inc"])] = float(end) if end is not None else data.end_t
    return ends


@dataclass(frozen=True)
class Ownership:
    """A member incarnation's claim on one partition from ``start`` to ``end``."""

    member: str
    inc: int
    partition: int
    gen: int
    start: float
    end: float


def ownerships(data: RunData) -> list[Ownership]:
    """Intervals during which each incarnation believed it owned each partition."""
    ends = incarnation_ends(data)
    by_inc: dict[tuple[str, int], list[Event]] = defaultdict(list)
    for e in data.audits:
        if e["kind"] in ("assign", "revoke", "lost", "stop"):
            by_inc[_key(e)].append(e)
    out: list[Ownership] = []
    for key, events in by_inc.items():
        held: dict[int, tuple[float, int]] = {}
        for e in sorted(events, key=lambda e: e["t"]):
            now = {p for _, p in e.get("partitions", [])}
            for p in list(held):
                if p not in now:
                    start, gen = held.pop(p)
                    out.append(Ownership(key[0], key[1], p, gen, start, e["t"]))
            for p in now:
                if p not in held:
                    held[p] = (e["t"], e.get("gen", -1))
        end = ends.get(key, data.end_t)
        for p, (start, gen) in held.items():
            out.append(Ownership(key[0], key[1], p, gen, start, end))
    return out


def _zombie_windows(data: RunData) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for f in data.faults:
        if f["kind"] == "zombie":
            out[f["member"]].append((f["t_stop"], f["t_cont"]))
    return out


def cap_of(e: Event) -> int:
    """Partitions a member can take according to an audit event: the tighter of its
    ``max_partitions`` and what its budget buys at its per-partition cost."""
    cap = int(e["max_partitions"])
    cost = e.get("partition_cost")
    if cost:
        cap = min(cap, int(e["budget"]) // int(cost))
    return cap


# ------------------------------------------------------------------ 1 ---------------


def _overload_context(data: RunData, e: Event, cap: int) -> dict[str, Any]:
    """Where an over-cap assignment came from: the incarnation's first assignment (a static
    member's cached one after a restart) or not, and how long until it was back under the cap
    (``None``: never)."""
    steps = sorted(
        (
            a
            for a in data.audits
            if _key(a) == _key(e) and a["kind"] in ("assign", "revoke", "lost", "stop")
        ),
        key=lambda a: a["t"],
    )
    later = [a for a in steps if a["t"] > e["t"] and len(a["partitions"]) <= cap]
    return {
        "first_assignment": bool(steps) and steps[0] is e,
        "held_s": round(later[0]["t"] - e["t"], 3) if later else None,
    }


def no_overload(data: RunData) -> Verdict:
    """1. No assignment above ``max_partitions``; buffered bytes never above the budget; RSS
    never above the budget plus the fixed overhead."""
    evidence: list[Any] = []
    checked = 0
    worst: dict[str, dict[str, float]] = defaultdict(lambda: {"partitions": 0.0, "bytes": 0.0})
    for e in data.audits:
        if e["kind"] not in ("assign", "revoke", "rss"):
            continue
        checked += 1
        budget = int(e["budget"])
        if e["kind"] in ("assign", "revoke"):
            n = len(e["partitions"])
            cap = int(e["max_partitions"])
            w = worst[e["member"]]
            w["partitions"] = max(w["partitions"], n / cap if cap else float(n > 0))
            if n > cap:
                evidence.append(
                    {
                        "member": e["member"],
                        "inc": e["inc"],
                        "gen": e.get("gen"),
                        "partitions": n,
                        "max_partitions": cap,
                        **_overload_context(data, e, cap),
                    }
                )
        buffered = int(e.get("buffered_bytes", 0))
        worst[e["member"]]["bytes"] = max(worst[e["member"]]["bytes"], buffered / budget)
        if buffered > budget:
            evidence.append(
                {
                    "member": e["member"],
                    "inc": e["inc"],
                    "buffered_bytes": buffered,
                    "budget": budget,
                }
            )
        if e["kind"] == "rss":
            limit = budget + data.limits.rss_overhead_bytes
            w = worst[e["member"]]
            w["rss"] = max(w.get("rss", 0.0), int(e["rss"]) / limit)
            if int(e["rss"]) > limit:
                evidence.append(
                    {"member": e["member"], "inc": e["inc"], "rss": e["rss"], "limit": limit}
                )
    return Verdict(
        1,
        "no overload",
        not evidence,
        checked,
        f"{checked} assignment/RSS observations, {len(evidence)} over a limit",
        evidence[:20],
        {"utilisation": {m: {k: round(v, 3) for k, v in w.items()} for m, w in worst.items()}},
    )


# ------------------------------------------------------------------ 2 ---------------


def no_double_ownership(data: RunData) -> Verdict:
    """2. No partition held by two members in one generation, and no two live owners of a
    partition overlap in time, except with a frozen zombie (which may do nothing meanwhile)."""
    evidence: list[Any] = []
    owners: dict[tuple[int, int], set[str]] = defaultdict(set)
    checked = 0
    for e in data.audits:
        if e["kind"] in ("assign", "revoke"):
            checked += 1
            for _, p in e["partitions"]:
                owners[(e["gen"], p)].add(e["member"])
    for (gen, p), members in sorted(owners.items()):
        if len(members) > 1:
            evidence.append({"generation": gen, "partition": p, "members": sorted(members)})
    zombies = _zombie_windows(data)
    slack = data.limits.clock_slack_s

    def frozen(member: str, start: float, end: float) -> bool:
        # The overlap is the zombie's doing if it began before the zombie woke up and ended
        # soon after: a woken zombie believes it owns the partition until it notices its lost
        # session, which must take no longer than ``wake_grace_s``.
        grace = data.limits.wake_grace_s
        return any(
            s - slack <= end and start <= c + slack and end <= c + grace
            for s, c in zombies.get(member, ())
        )

    by_partition: dict[int, list[Ownership]] = defaultdict(list)
    for o in ownerships(data):
        by_partition[o.partition].append(o)
    for p, items in sorted(by_partition.items()):
        items.sort(key=lambda o: o.start)
        for i, a in enumerate(items):
            for b in items[i + 1 :]:
                if b.start >= a.end - slack:
                    continue
                if a.member == b.member:
                    continue  # a static restart's old incarnation is gone (end_t) or frozen
                lo, hi = max(a.start, b.start), min(a.end, b.end)
                if frozen(a.member, lo, hi) or frozen(b.member, lo, hi):
                    continue
                evidence.append(
                    {
                        "partition": p,
                        "overlap_s": round(hi - lo, 3),
                        "from": round(lo, 3),
                        "owners": [[a.member, a.inc, a.gen], [b.member, b.inc, b.gen]],
                    }
                )
    return Verdict(
        2,
        "no double ownership",
        not evidence,
        checked,
        f"{len(owners)} (generation, partition) claims; {len(evidence)} conflicts",
        evidence[:20],
    )


# ------------------------------------------------------------------ 3 ---------------


def relays(data: RunData) -> list[Event]:
    """One row per relayed record: ``{"t", "member", "inc", "gen", "topic", "p", "o",
    "dest_topic", "dest_p", "hops", "owned"}`` (``p``/``o``: where the relaying member read
    it; ``t``: when ``on_records_relayed`` saw the produce acknowledged)."""
    out: list[Event] = []
    for e in _of(data.audits, "relay"):
        for topic, p, o, dest_topic, dest_p, hops, *up in e["relayed"]:
            out.append(
                {
                    "t": e["t"],
                    "member": e["member"],
                    "inc": e["inc"],
                    "gen": e.get("gen", -1),
                    "topic": topic,
                    "p": p,
                    "o": o,
                    "dest_topic": dest_topic,
                    "dest_p": dest_p,
                    "hops": hops,
                    "owned": e.get("owned"),
                    "up": up[0] if up else None,
                }
            )
    return out


Chains = dict[tuple[int, int], tuple[int, int]]


def upstream(data: RunData) -> Chains:
    """Position of a relayed copy -> the position it was relayed from, for copies that were
    themselves relayed on (the relaying member audits the incoming ``capgroup.relay.origin``
    header of what it relays as ``up``)."""
    out: Chains = {}
    for r in relays(data):
        up = r.get("up")
        if up and r["topic"] == data.topic:
            out[(r["p"], r["o"])] = (int(up[1]), int(up[2]))
    return out


def resolve(position: tuple[int, int], chains: Chains) -> tuple[int, int]:
    """Follow relay hops back to the produced record (at most 100 steps: no cycles)."""
    for _ in range(100):
        if position not in chains:
            break
        position = chains[position]
    return position


def root(r: Event, chains: Chains | None = None) -> tuple[int, int]:
    """The produced record a sink row stands for: for a relayed copy, its
    ``capgroup.relay.origin`` (where it was relayed from) followed back through earlier hops
    with ``chains`` (:func:`upstream`); else its own position."""
    origin = r.get("origin")
    if not origin:
        return (r["p"], r["o"])
    return resolve((int(origin[1]), int(origin[2])), chains or {})


def flushed_offsets(data: RunData) -> dict[int, set[int]]:
    """Partition -> offsets handled at that position: flushed into some sink, or relayed on
    (a relayed record's offset is its relaying member's to commit once acknowledged)."""
    out: dict[int, set[int]] = defaultdict(set)
    for r in data.sinks:
        out[r["p"]].add(r["o"])
    for r in relays(data):
        if r["topic"] == data.topic:
            out[r["p"]].add(r["o"])
    return out


def processed_roots(data: RunData) -> dict[int, set[int]]:
    """Partition -> produced offsets some sink holds, directly or as a relayed copy."""
    out: dict[int, set[int]] = defaultdict(set)
    chains = upstream(data)
    for r in data.sinks:
        p, o = root(r, chains)
        out[p].add(o)
    return out


def no_loss(data: RunData) -> Verdict:
    """3. Every acknowledged record appears in some sink file, at its position or as a relayed
    copy naming it in its origin header (a relay alone is not processing)."""
    flushed = processed_roots(data)
    missing: dict[int, list[int]] = {}
    for p, offs in _acked(data).items():
        gone = offs - flushed.get(p, set())
        if gone:
            missing[p] = sorted(gone)
    total = sum(len(v) for v in missing.values())
    return Verdict(
        3,
        "no loss",
        not missing,
        len(data.produced),
        f"{len(data.produced)} acknowledged records, {total} in no sink",
        [{"partition": p, "missing": ranges(offs)} for p, offs in sorted(missing.items())],
        {"missing": total},
    )


def _acked(data: RunData) -> dict[int, set[int]]:
    out: dict[int, set[int]] = defaultdict(set)
    for a in data.produced:
        out[a["p"]].add(a["o"])
    return out


# ------------------------------------------------------------------ 4 ---------------


def commit_metadata(c: Event) -> dict[int, str]:
    """Partition -> the metadata a commit event carried (range jobs), for the run's topic."""
    return {int(p): text for _, p, text in c.get("metadata", [])}


def finished_ranges(metadata: str | None, committed: int) -> tuple[tuple[int, int], ...]:
    """The finished ``[start, end)`` ranges beyond ``committed`` that ``metadata`` records
    (decoded as a new owner would: :func:`capgroup.protocol.completed_ranges.decode_completed`;
    unusable metadata records nothing)."""
    if not metadata:
        return ()
    return decode_completed(metadata, committed).ranges.ranges


def honest_commits(data: RunData) -> Verdict:
    """4. Final committed offsets are at most 1 + the highest flushed offset with everything
    below flushed, and every accepted commit during the run covered only records some sink had
    already received when the commit was sent (or, relayed, whose produce had been
    acknowledged: the ``relay`` audit event comes after the acknowledgement); with range jobs,
    the finished ranges its metadata records count as covered: the committed offset never
    passes an unfinished job, and the metadata never records one."""
    evidence: list[Any] = []
    first_flush: dict[tuple[int, int], float] = {}
    handled = data.sinks + [r for r in relays(data) if r["topic"] == data.topic]
    for r in handled:
        key = (r["p"], r["o"])
        if key not in first_flush or r["t"] < first_flush[key]:
            first_flush[key] = r["t"]
    flushed = flushed_offsets(data)
    checked = 0
    for p, committed in sorted(data.committed.items()):
        if committed is None:
            continue
        checked += 1
        offs = flushed.get(p, set())
        high = max(offs) if offs else -1
        unflushed = set(range(committed)) - offs
        if committed > high + 1 or unflushed:
            evidence.append(
                {
                    "partition": p,
                    "committed": committed,
                    "highest_flushed": high,
                    "unflushed_below": ranges(unflushed, 5),
                }
            )
    # Commits during the run: ``o < offset`` must have reached a sink before the commit left.
    # Offsets ever committed for a partition only grow within one owner, so checking the
    # newly covered range per commit is enough, but checking from 0 is simpler and still cheap
    # thanks to the per-partition high-water mark below.
    verified: dict[int, int] = defaultdict(int)
    slack = data.limits.clock_slack_s
    for c in sorted(_of(data.audits, "commit"), key=lambda c: c["t_sent"]):
        if not c.get("ok"):
            continue
        finished = commit_metadata(c)
        for _, p, offset in c["offsets"]:
            checked += 1
            # Range jobs: the finished jobs the metadata records count as covered too.
            recorded = [
                o
                for start, end in finished_ranges(finished.get(p), offset)
                for o in range(start, end)
            ]
            late = [
                o
                for o in [*range(verified[p], offset), *recorded]
                if first_flush.get((p, o), float("inf")) > c["t_sent"] + slack
            ]
            if late:
                evidence.append(
                    {
                        "partition": p,
                        "commit": offset,
                        "member": c["member"],
                        "inc": c["inc"],
                        "gen": c["gen"],
                        "not_flushed_before_commit": ranges(late, 5),
                    }
                )
            else:
                verified[p] = max(verified[p], offset)
    return Verdict(
        4,
        "honest commits",
        not evidence,
        checked,
        f"{len(data.committed)} final offsets and the accepted commits checked; "
        f"{len(evidence)} dishonest",
        evidence[:20],
    )


# ------------------------------------------------------------------ 5 ---------------


def duplicates(data: RunData) -> list[tuple[Event, Event]]:
    """(first flush, later flush) pairs of every produced record flushed more than once, at
    its position or as relayed copies (keyed by :func:`root`)."""
    first: dict[tuple[int, int], Event] = {}
    out: list[tuple[Event, Event]] = []
    chains = upstream(data)
    for r in sorted(data.sinks, key=lambda r: r["t"]):
        key = root(r, chains)
        if key in first:
            out.append((first[key], r))
        else:
            first[key] = r
    return out


def attribute_duplicate(data: RunData, first: Event, again: Event) -> str | None:
    """The fault or audit event that explains why ``first``'s record was flushed again.

    A hard fault of the first flusher (or of the cluster) between the two flushes explains it,
    as does the first flusher losing the partition, discarding a buffer of it, or failing to
    commit it. A graceful fault alone does not: SIGTERM must flush and commit.
    """
    lo, hi = first["t"] - data.limits.clock_slack_s, again["t"] + data.limits.clock_slack_s
    for f in data.faults:
        if f["kind"] not in HARD_FAULTS or not lo <= f["t"] <= hi:
            continue
        if f["kind"] in CLUSTER_FAULTS or f.get("member") == first["member"]:
            return f"{f['kind']}@{f['t']:.1f}" + (f":{f['member']}" if f.get("member") else "")
    # One of the flushes came from a zombie's batch (or range job), held before the freeze
    # and flushed on waking before the member noticed its session was gone (its commit is then
    # fenced, its job outcome late): the other one redid it, earlier or later.
    session = data.limits.session_timeout_s
    for r in (again, first):
        for f in data.faults:
            if (
                f["kind"] == "zombie"
                and f["member"] == r["member"]
                and f["t_stop"] - data.limits.clock_slack_s <= r["t"] <= f["t_cont"] + session
            ):
                return f"zombie@{f['t']:.1f}:{f['member']}"
    for e in data.audits:
        if e["member"] != first["member"] or not lo <= e["t"] <= hi:
            continue
        p = first["p"]
        if e["kind"] == "lost" and any(q == p for _, q in e.get("lost", [])):
            return f"lost@{e['t']:.1f}:{e['member']}"
        if e["kind"] == "discard" and e["p"] == p:
            return f"discard@{e['t']:.1f}:{e['member']}"
        if e["kind"] == "commit" and not e.get("ok") and any(q == p for _, q, _ in e["offsets"]):
            return f"commit_failed@{e['t']:.1f}:{e['member']}"
    return attribute_range_job_duplicate(data, first, again)


def _frozen_at(data: RunData, member: str, t: float) -> Event | None:
    """The zombie fault that had ``member`` frozen at ``t``, or woken less than a session
    timeout before it (still believing in its lost generation)."""
    slack, session = data.limits.clock_slack_s, data.limits.session_timeout_s
    for f in data.faults:
        if (
            f["kind"] == "zombie"
            and f["member"] == member
            and f["t_stop"] - slack <= t <= f["t_cont"] + session
        ):
            return f
    return None


def attribute_range_job_duplicate(data: RunData, first: Event, again: Event) -> str | None:
    """Range jobs (issue 14): a job is offered again when its attempt timed out or failed
    (its worker killed, frozen or too slow: every record of an earlier attempt may still be
    flushed), and a new scheduler redoes what its predecessor had not committed. So a record
    flushed twice by range jobs is explained by the job being reoffered (two attempts of one
    range), by a hard fault of the scheduler that assigned the first flush's job, by that
    scheduler losing, giving up (revoke, shutdown) or dropping the partition (between that
    job's assignment and the second flush), or by a frozen scheduler assigning the second
    flush's job."""
    job1, job2 = first.get("job"), again.get("job")
    if job1 and job2 and job1[:2] == job2[:2] and job1[2] != job2[2]:
        return f"job_reoffered@{first['t']:.1f}:{first.get('sched')}"
    # From the first flush's assignment: its scheduler may have died before it was flushed.
    began = min(first["t"], first.get("assigned_t", first["t"]))
    lo, hi = began - data.limits.clock_slack_s, again["t"] + data.limits.clock_slack_s
    sched = first.get("sched")
    if job1 and sched:
        for f in data.faults:
            if f["kind"] in HARD_FAULTS and f.get("member") == sched and lo <= f["t"] <= hi:
                return f"scheduler_{f['kind']}@{f['t']:.1f}:{sched}"
        p = first["p"]
        for e in data.audits:
            if e["member"] != sched or not lo <= e["t"] <= hi:
                continue
            gave_up = e.get("lost", []) + e.get("revoked", []) + e.get("released", [])
            if e["kind"] in ("lost", "revoke", "stop") and any(q == p for _, q in gave_up):
                return f"scheduler_{e['kind']}@{e['t']:.1f}:{sched}"
            if e["kind"] == "rj_drop" and e["p"] == p:
                return f"scheduler_dropped@{e['t']:.1f}:{sched}"
    if job2 and again.get("sched") and again.get("assigned_t") is not None:
        f = _frozen_at(data, again["sched"], again["assigned_t"])
        if f is not None:
            return f"scheduler_zombie@{f['t']:.1f}:{again['sched']}"
    return None


def attribute_relayed_duplicate(data: RunData, first: Event, again: Event) -> str | None:
    """Like :func:`attribute_duplicate`, for a record that went through a relay: the copy
    was produced twice (or processed both in place and as a copy) because of what happened to
    a member that *relayed* it. Every relay of the record (at its produced position) before
    the second flush counts as a handling of it, first or again."""
    chains = upstream(data)
    key = root(again, chains)
    hi = again["t"] + data.limits.clock_slack_s
    handlings = [
        r for r in relays(data) if resolve((r["p"], r["o"]), chains) == key and r["t"] <= hi
    ]
    if not handlings:
        return None
    firsts = [first, *handlings]
    agains = [again, *handlings]
    for a in firsts:
        for b in agains:
            if a is b or b["t"] < a["t"]:
                continue
            cause = attribute_duplicate(data, a, b)
            if cause is not None:
                return cause
    return None


def bounded_duplicates(data: RunData) -> Verdict:
    """5. Every duplicate is explained by a fault or a discarded/lost/fenced batch (of the
    record's first flusher or, for a relayed record, of a member that relayed it)."""
    by_cause: dict[str, int] = defaultdict(int)
    unexplained: list[tuple[Event, Event]] = []
    pairs = duplicates(data)
    chains = upstream(data)
    for first, again in pairs:
        cause = attribute_duplicate(data, first, again)
        if cause is None:
            cause = attribute_relayed_duplicate(data, first, again)
        if cause is None:
            unexplained.append((first, again))
        else:
            by_cause[cause] += 1
    evidence = [
        {
            "partition": root(a, chains)[0],
            "offset": root(a, chains)[1],
            "first": [a["member"], a["inc"], a["gen"], round(a["t"], 3)],
            "again": [b["member"], b["inc"], b["gen"], round(b["t"], 3)],
            **(
                {"copies": [[r["p"], r["o"]] for r in (a, b)]}
                if "origin" in a or "origin" in b
                else {}
            ),
        }
        for a, b in unexplained[:20]
    ]
    return Verdict(
        5,
        "bounded duplicates",
        not unexplained,
        len(data.sinks),
        f"{len(pairs)} duplicate flushes, {len(unexplained)} unexplained",
        evidence,
        {"duplicates": len(pairs), "by_cause": dict(sorted(by_cause.items()))},
    )


# ------------------------------------------------------------------ 6 ---------------


def generations(data: RunData) -> dict[int, dict[str, Event]]:
    """Generation -> member -> the member's assignment event in it (the last one)."""
    out: dict[int, dict[str, Event]] = defaultdict(dict)
    for e in sorted(_of(data.audits, "assign"), key=lambda e: e["t"]):
        out[e["gen"]][e["member"]] = e
    return dict(out)


def recovery_times(data: RunData) -> list[dict[str, Any]]:
    """For every SIGKILL, per partition the victim owned: seconds until a record of it was
    flushed by someone else (or by the victim's next incarnation)."""
    out: list[dict[str, Any]] = []
    by_partition: dict[int, list[Event]] = defaultdict(list)
    # A relay of a partition's records is consuming it too (the copies are processed elsewhere).
    for r in sorted(data.sinks + relays(data), key=lambda r: r["t"]):
        by_partition[r["p"]].append(r)
    owned_at = ownerships(data)
    last_ack: dict[int, float] = {}
    for a in data.produced:
        last_ack[a["p"]] = max(last_ack.get(a["p"], 0.0), a["t"])
    for f in data.faults:
        if f["kind"] != "sigkill":
            continue
        victim, t = f["member"], f["t"]
        held = {
            o.partition
            for o in owned_at
            if o.member == victim and o.inc == f.get("inc", o.inc) and o.start <= t <= o.end + 0.01
        }
        for p in sorted(held):
            if last_ack.get(p, 0.0) <= t:
                continue  # nothing was produced to it afterwards: recovery is unobservable
            after = next(
                (
                    r
                    for r in by_partition.get(p, [])
                    if r["t"] > t and (r["member"], r["inc"]) != (victim, f.get("inc"))
                ),
                None,
            )
            out.append(
                {
                    "fault_t": t,
                    "member": victim,
                    "inc": f.get("inc"),
                    "partition": p,
                    "seconds": None if after is None else round(after["t"] - t, 3),
                    "by": None if after is None else after["member"],
                }
            )
    return out


def joined_at(data: RunData) -> dict[tuple[str, int], float]:
    """When each incarnation first showed a valid generation (an assignment, a commit or an RSS
    sample taken in a generation): before that a starting process is no capacity yet."""
    out: dict[tuple[str, int], float] = {}
    for e in data.audits:
        if e["kind"] in ("assign", "rss", "commit") and e.get("gen", -1) >= 0:
            key = _key(e)
            out[key] = min(out.get(key, e["t"]), e["t"])
    return out


def _capacity_at(data: RunData, t: float) -> int:
    """Sum of the partition caps of member incarnations in the group (joined, not yet ended)
    and not frozen at ``t``."""
    zombies = _zombie_windows(data)
    starts = {_key(e): e for e in _of(data.audits, "start")}
    joined = joined_at(data)
    total = 0
    for inc in data.incarnations:
        key = (inc["member"], inc["inc"])
        end = inc.get("end_t") or data.end_t
        if key not in joined or not joined[key] <= t < end:
            continue
        if any(s <= t <= c for s, c in zombies.get(inc["member"], ())):
            continue
        e = starts.get(key)
        total += cap_of(e) if e else int(inc.get("max_partitions", 0))
    return total


def _capacity_back(data: RunData, t: float) -> float | None:
    """The first moment from ``t`` on at which the group's capacity covers every partition."""
    moments = {t} | set(joined_at(data).values())
    moments |= {float(i["end_t"]) for i in data.incarnations if i.get("end_t")}
    moments |= {f["t_cont"] for f in data.faults if f["kind"] == "zombie"}
    for m in sorted(x for x in moments if x >= t):
        if _capacity_at(data, m) >= data.partitions:
            return m
    return None


def recovery(data: RunData) -> Verdict:
    """6. Partitions are unassigned only while capacity is short (or for a hand-off's length),
    and a killed member's partitions are consumed again within session timeout + 5 s (plus one
    batch age) of the kill, or of the moment the group could hold every partition again when
    its capacity was short at the kill."""
    limits = data.limits
    evidence: list[Any] = []
    # Walk the run in time: at every ownership change, who holds what (each incarnation's
    # latest state carries forward; a member that kept its partitions through a rebalance
    # reports nothing) against the capacity of the members alive and not frozen then.
    owned = ownerships(data)
    changes = {o.start for o in owned} | {o.end for o in owned}
    changes |= set(joined_at(data).values())
    changes |= {float(i["end_t"]) for i in data.incarnations if i.get("end_t")}
    changes |= {f[k] for f in data.faults if f["kind"] == "zombie" for k in ("t_stop", "t_cont")}
    first = min((o.start for o in owned), default=data.end_t)
    moments = sorted(t for t in changes | {data.end_t} if first <= t <= data.end_t)
    short_stretches: list[dict[str, Any]] = []
    stretch: float | None = None
    short: dict[str, Any] | None = None
    for i, t in enumerate(moments[:-1]):
        following = moments[i + 1]
        assigned = {o.partition for o in owned if o.start <= t < o.end}
        unassigned = data.partitions - len(assigned)
        capacity = _capacity_at(data, t)
        if unassigned and capacity < data.partitions:
            if short is None:
                short = {"from": round(t, 1), "unassigned": unassigned, "capacity": capacity}
                short_stretches.append(short)
            short["unassigned"] = max(short["unassigned"], unassigned)
            short["s"] = round(following - short["from"], 1)
        else:
            short = None
        if unassigned and capacity >= data.partitions:
            stretch = t if stretch is None else stretch
            if following - stretch > limits.unassigned_grace_s:
                evidence.append(
                    {
                        "from": round(stretch, 1),
                        "unassigned": sorted(set(range(data.partitions)) - assigned),
                        "capacity": capacity,
                        "lasted_s": round(following - stretch, 1),
                    }
                )
                stretch = None
        else:
            stretch = None
    bound = limits.session_timeout_s + limits.recovery_slack_s + limits.batch_age_s
    times = recovery_times(data)
    excused = 0
    for r in times:
        if r["seconds"] is not None and r["seconds"] <= bound:
            continue
        # Capacity short at the kill (e.g. the restarted process still starting up): the
        # clock starts when the group can hold every partition again.
        # (The victim's own process counts until the driver reaped it: start after that.)
        reaped = incarnation_ends(data).get((r["member"], r["inc"]), r["fault_t"])
        back = _capacity_back(data, max(r["fault_t"], reaped) + 1e-3)
        if back is None:
            excused += 1
            continue
        waited = back - r["fault_t"]
        if r["seconds"] is not None and r["seconds"] <= waited + bound:
            excused += 1
            continue
        evidence.append({**r, "bound_s": bound, "capacity_back_after_s": round(waited, 3)})
    seconds = [r["seconds"] for r in times if r["seconds"] is not None]
    figures: dict[str, Any] = {
        "bound_s": bound,
        "recoveries": len(times),
        "excused_capacity_short": excused,
        "note": "excused: slower than the bound, but within it once capacity was back",
        "capacity_short_stretches": short_stretches,
    }
    if seconds:
        figures |= {
            "min_s": min(seconds),
            "median_s": statistics.median(seconds),
            "p90_s": sorted(seconds)[int(0.9 * (len(seconds) - 1))],
            "max_s": max(seconds),
        }
    return Verdict(
        6,
        "recovery",
        not evidence,
        len(times) + len(moments) - 1,
        f"{len(moments) - 1} ownership changes, {len(times)} killed partitions re-consumed "
        f"(bound {bound:.1f} s, {excused} excused by short capacity); {len(evidence)} violations",
        evidence[:20],
        figures,
    )


# ------------------------------------------------------------------ 7 ---------------


def zombies_never_commit(data: RunData) -> Verdict:
    """7. A SIGSTOPped member sends no commit under its pre-freeze generation after SIGCONT."""
    evidence: list[Any] = []
    checked = 0
    commits = _of(data.audits, "commit")
    assigns = _of(data.audits, "assign")
    for f in data.faults:
        if f["kind"] != "zombie":
            continue
        checked += 1
        before = [e for e in assigns if e["member"] == f["member"] and e["t"] <= f["t_stop"]]
        stale_gen = max((e["gen"] for e in before), default=-1)
        for c in commits:
            if c["member"] != f["member"] or c["t_sent"] <= f["t_cont"]:
                continue
            # Generations only grow, so anything at or below the frozen one is stale.
            if c["gen"] <= stale_gen:
                evidence.append(
                    {
                        "member": c["member"],
                        "inc": c["inc"],
                        "gen": c["gen"],
                        "frozen_gen": stale_gen,
                        "sent_after_wake_s": round(c["t_sent"] - f["t_cont"], 3),
                        "accepted": bool(c.get("ok")),
                        "offsets": c["offsets"][:5],
                    }
                )
    return Verdict(
        7,
        "zombies never commit",
        not evidence,
        checked,
        f"{checked} zombies; {len(evidence)} commits sent after waking under a stale generation",
        evidence[:20],
    )


# ------------------------------------------------------------------ 8 (relay) -------


def hop_limit(data: RunData) -> Verdict:
    """8. No record goes over ``CAPGROUP_RELAY_MAX_HOPS``: no relay produces a copy with more
    hops than the limit (a record at the limit is processed where it is), and no flushed copy
    carries more. Figures: relays per source partition and the hops histogram."""
    limit = data.limits.relay_max_hops
    evidence: list[Any] = []
    rows = relays(data)
    hops: dict[int, int] = defaultdict(int)
    by_source: dict[int, int] = defaultdict(int)
    for r in rows:
        hops[int(r["hops"])] += 1
        by_source[r["p"]] += 1
        if int(r["hops"]) > limit:
            evidence.append(
                {
                    "relay": [r["member"], r["inc"], r["gen"], round(r["t"], 3)],
                    "from": [r["p"], r["o"]],
                    "to": r["dest_p"],
                    "hops": r["hops"],
                    "limit": limit,
                }
            )
    copies = [r for r in data.sinks if "hops" in r]
    for r in copies:
        if int(r["hops"]) > limit:
            evidence.append(
                {
                    "flushed": [r["member"], r["inc"], r["gen"], round(r["t"], 3)],
                    "at": [r["p"], r["o"]],
                    "origin": r.get("origin"),
                    "hops": r["hops"],
                    "limit": limit,
                }
            )
    return Verdict(
        8,
        "relay hop limit",
        not evidence,
        len(rows) + len(copies),
        f"{len(rows)} relays, {len(copies)} relayed copies flushed (limit {limit} hops); "
        f"{len(evidence)} over the limit",
        evidence[:20],
        {
            "relayed": len(rows),
            "copies_flushed": len(copies),
            "hops": dict(sorted(hops.items())),
            "relayed_by_source_partition": dict(sorted(by_source.items())),
        },
    )


# ------------------------------------------------------------------ 9 (relay) -------


def _owned_at(data: RunData) -> dict[tuple[str, int], list[tuple[float, set[tuple[str, int]]]]]:
    """Per incarnation, its owned (topic, partition) set after each assignment step."""
    out: dict[tuple[str, int], list[tuple[float, set[tuple[str, int]]]]] = defaultdict(list)
    steps = (e for e in data.audits if e["kind"] in ("assign", "revoke", "lost", "stop"))
    for e in sorted(steps, key=lambda e: e["t"]):
        held = [*e.get("partitions", []), *e.get("relay_only", [])]
        out[_key(e)].append((e["t"], {(t, p) for t, p in held}))
    return out


def no_relay_to_self(data: RunData) -> Verdict:
    """9. Relays go to another member's partition: no member relays to a partition it owns at
    that moment (the destination is not in the relaying incarnation's audited assignment at the
    time of the relay: its trail of assign/revoke/lost/stop steps, relay-only partitions
    included; without any, the owned set it audited with the relay), and no relay goes to a
    partition nobody owned around then (a copy there waits for capacity: not a healthy
    partition). A destination gained within the clock slack before the relay (a rebalance
    between the produce and its acknowledgement) is not held against it; a destination counts
    as owned by someone if any incarnation held it within a session timeout before the relay
    (a killed owner's partition is still healthy until the group notices)."""
    evidence: list[Any] = []
    steps = _owned_at(data)
    slack = data.limits.clock_slack_s
    owners: dict[int, list[Ownership]] = defaultdict(list)
    for o in ownerships(data):
        owners[o.partition].append(o)
    rows = relays(data)
    unowned: dict[int, int] = defaultdict(int)
    for r in rows:
        dest = (r["dest_topic"], r["dest_p"])
        history = steps.get((r["member"], r["inc"]), [])
        trail = [(t, owned) for t, owned in history if t <= r["t"]]
        held_since: float | None = None
        for t, owned in trail:
            if dest not in owned:
                held_since = None
            elif held_since is None:
                held_since = t
        if trail:
            owns = held_since is not None and held_since <= r["t"] - slack
        else:  # no assignment audited (e.g. a relay-only member): the relay's own snapshot
            snapshot = r.get("owned") or []
            owns = [dest[0], dest[1]] in snapshot
        if owns:
            evidence.append(
                {
                    "member": r["member"],
                    "inc": r["inc"],
                    "gen": r["gen"],
                    "t": round(r["t"], 3),
                    "from": [r["p"], r["o"]],
                    "to": dest[1],
                    "owned": sorted(p for _, p in trail[-1][1]) if trail else r.get("owned"),
                }
            )
            continue
        if dest[0] != data.topic:
            continue  # a relay topic's ownership is not audited
        lo = r["t"] - data.limits.session_timeout_s - slack
        if not any(o.start <= r["t"] + slack and o.end >= lo for o in owners[dest[1]]):
            if not unowned[dest[1]]:
                evidence.append(
                    {
                        "member": r["member"],
                        "inc": r["inc"],
                        "t": round(r["t"], 3),
                        "from": [r["p"], r["o"]],
                        "to": dest[1],
                        "to_unowned_partition": True,
                    }
                )
            unowned[dest[1]] += 1
    return Verdict(
        9,
        "relay to another member",
        not evidence,
        len(rows),
        f"{len(rows)} relays checked against the members' ownership; "
        f"{len(evidence) - len(unowned)} to a partition the relaying member owned, "
        f"{sum(unowned.values())} to a partition nobody owned",
        evidence[:20],
        {"to_unowned_partition": dict(sorted(unowned.items()))},
    )


# ------------------------------------------------------------------ 10 (range jobs) -


def _lost_by(data: RunData, member: str, p: int, t: float) -> bool:
    """Whether ``member`` audited losing partition ``p`` within a session timeout after
    ``t`` (a scheduler that assigned a job while its generation was already gone)."""
    hi = t + data.limits.session_timeout_s
    return any(
        e["kind"] == "lost"
        and e["member"] == member
        and t - data.limits.clock_slack_s <= e["t"] <= hi
        and any(q == p for _, q in e.get("lost", []))
        for e in data.audits
    )


def metadata_jobs_not_redone(data: RunData) -> Verdict:
    """10. Finished jobs recorded in commit metadata are not redone: once a commit whose
    metadata records a finished range R (beyond the committed offset) was accepted, no member
    flushes a record of R again, unless the flush was of a job attempt assigned before that
    commit was sent (it was in progress), its flusher was frozen around it (a zombie working
    what it held), or the scheduler that assigned it was frozen or had lost the partition
    around then (a stale scheduler). A new owner taking over from that commit must skip R.
    Figures: commits with metadata, takeovers that started from finished ranges, excuses."""
    slack = data.limits.clock_slack_s
    rows: dict[int, list[Event]] = defaultdict(list)
    for r in data.sinks:
        if r.get("topic", data.topic) == data.topic and "origin" not in r:
            rows[r["p"]].append(r)
    for p in rows:
        rows[p].sort(key=lambda r: r["t"])
    evidence: list[Any] = []
    flagged: set[tuple[int, int, float, str]] = set()
    excused: dict[str, int] = defaultdict(int)
    checked = 0
    recorded_offsets = 0
    for c in sorted(_of(data.audits, "commit"), key=lambda c: c["t_sent"]):
        if not c.get("ok"):
            continue
        offsets = {p: o for _, p, o in c["offsets"]}
        for p, text in commit_metadata(c).items():
            finished = finished_ranges(text, offsets.get(p, -1))
            if not finished:
                continue
            checked += 1
            recorded_offsets += sum(e - s for s, e in finished)
            for r in rows.get(p, []):
                if r["t"] <= c["t_sent"] + slack:
                    continue
                if not any(s <= r["o"] < e for s, e in finished):
                    continue
                key = (p, r["o"], r["t"], r["member"])
                if key in flagged:
                    continue
                assigned = r.get("assigned_t")
                sched = r.get("sched")
                if assigned is not None and assigned <= c["t_sent"] + slack:
                    reason = "assigned_before_commit"
                elif _frozen_at(data, r["member"], r["t"]) is not None:
                    reason = "flusher_zombie"
                elif sched and assigned is not None and _frozen_at(data, sched, assigned):
                    reason = "scheduler_zombie"
                elif sched and assigned is not None and _lost_by(data, sched, p, assigned):
                    reason = "scheduler_lost"
                else:
                    reason = ""
                flagged.add(key)
                if reason:
                    excused[reason] += 1
                    continue
                evidence.append(
                    {
                        "partition": p,
                        "offset": r["o"],
                        "flushed": [r["member"], r["inc"], round(r["t"], 3)],
                        "job": r.get("job"),
                        "sched": sched,
                        "recorded_by": [c["member"], c["inc"], c["gen"], round(c["t_sent"], 3)],
                        "commit": offsets.get(p),
                        "recorded": [list(x) for x in finished[:5]],
                    }
                )
    takes = _of(data.audits, "rj_take")
    from_metadata = [
        t for t in takes if t.get("topic", data.topic) == data.topic and t.get("known", 0) > 0
    ]
    redone = len(evidence)
    return Verdict(
        10,
        "finished jobs not redone",
        not evidence,
        checked,
        f"{checked} accepted commits recorded finished jobs ({recorded_offsets} offsets in "
        f"all); {len(takes)} scheduler takeovers, {len(from_metadata)} from finished jobs; "
        f"{redone} recorded records flushed again without an excuse",
        _first_per_job(evidence)[:20],
        {
            "commits_with_metadata": checked,
            "takeovers": len(takes),
            "takeovers_from_metadata": len(from_metadata),
            "finished_ranges_at_takeover": sum(t.get("known", 0) for t in from_metadata),
            "redone": redone,
            "excused": dict(sorted(excused.items())),
        },
    )


def _first_per_job(evidence: list[Any]) -> list[Any]:
    """One evidence row per (partition, job, flusher): the first offset of each redone job,
    with how many of its records were flushed again."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for e in evidence:
        key = (e["partition"], tuple(e["job"] or ()), e["flushed"][0], e["flushed"][1])
        if key in out:
            out[key]["records"] += 1
        else:
            out[key] = {**e, "records": 1}
    return list(out.values())


ALL: Sequence[Callable[[RunData], Verdict]] = (
    no_overload,
    no_double_ownership,
    no_loss,
    honest_commits,
    bounded_duplicates,
    recovery,
    zombies_never_commit,
)
#: Judged only in relay runs (``Limits.relay_max_hops`` set).
RELAY: Sequence[Callable[[RunData], Verdict]] = (hop_limit, no_relay_to_self)
#: Judged only in range-jobs runs (``Limits.range_jobs`` set).
RANGE_JOBS: Sequence[Callable[[RunData], Verdict]] = (metadata_jobs_not_redone,)


def check_all(data: RunData) -> list[Verdict]:
    """Every invariant's verdict, in order (the relay ones only for a relay run, the
    range-jobs one only for a range-jobs run)."""
    checks = [
        *ALL,
        *(RELAY if data.limits.relay_max_hops else ()),
        *(RANGE_JOBS if data.limits.range_jobs else ()),
    ]
    return [check(data) for check in checks]
