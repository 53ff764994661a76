"""The chaos report: JSON with everything the issue asks for, and a human-readable summary."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tests.chaos.invariants import RunData, Verdict, duplicates, generations, processed_roots


def build_report(
    data: RunData, verdicts: list[Verdict], meta: dict[str, Any], *, wall_s: float
) -> dict[str, Any]:
    """Faults, rebalances, record counts, budget utilisation, recovery times and verdicts."""
    gens = generations(data)
    commits = [e for e in data.audits if e["kind"] == "commit"]
    # A record counts as processed at its own position or as a relayed copy of it.
    flushed = {(p, o) for p, offsets in processed_roots(data).items() for o in offsets}
    acked = {(a["p"], a["o"]) for a in data.produced}
    by_kind = {v.number: v for v in verdicts}
    t0 = min((f["t"] for f in data.faults), default=0.0)
    return {
        "topic": data.topic,
        "group": meta.get("group"),
        "config": meta.get("config", {}),
        "limits": meta.get("limits", {}),
        "wall_s": round(wall_s, 1),
        "faults": [
            {**f, "at_s": round(f["t"] - t0, 1), "took_s": round(f["t_end"] - f["t"], 1)}
            for f in sorted(data.faults, key=lambda f: f["t"])
        ],
        "fault_counts": dict(Counter(f["kind"] for f in data.faults)),
        "generations": {
            "count": len(gens),
            "first": min(gens, default=None),
            "last": max(gens, default=None),
            "per_generation": {
                str(g): {m: len(e["partitions"]) for m, e in sorted(members.items())}
                for g, members in sorted(gens.items())
            },
        },
        "incarnations": len(data.incarnations),
        "records": {
            "produced_acked": len(acked),
            "processed_rows": len(data.sinks),
            "processed_distinct": len(flushed),
            "duplicated": len(duplicates(data)),
            "lost": len(acked - flushed),
            "commits_sent": len(commits),
            "commits_refused": sum(1 for c in commits if not c.get("ok")),
        },
        "utilisation": by_kind[1].figures.get("utilisation", {}) if 1 in by_kind else {},
        "recovery": by_kind[6].figures if 6 in by_kind else {},
        "duplicates_by_cause": by_kind[5].figures.get("by_cause", {}) if 5 in by_kind else {},
        "relay": relay_figures(data, by_kind[8]) if 8 in by_kind else None,
        "range_jobs": range_jobs_figures(data, by_kind[10]) if 10 in by_kind else None,
        "verdicts": [v.as_dict() for v in verdicts],
        "passed": all(v.passed and not v.skipped for v in verdicts),
    }


def relay_figures(data: RunData, hops: Verdict) -> dict[str, Any]:
    """Relay run: relays by source partition, hops, the hot partition and the partitions that
    were relay-only at some point (with how many of their records were relayed)."""
    produced = Counter(a["p"] for a in data.produced)
    relay_only = sorted({p for e in data.audits for _, p in e.get("relay_only", [])})
    by_source = hops.figures.get("relayed_by_source_partition", {})
    return {
        **hops.figures,
        "produced_by_partition": dict(sorted(produced.items())),
        "hot_partition": produced.most_common(1)[0][0] if produced else None,
        "relay_only_partitions": relay_only,
        "relayed_from_relay_only": sum(by_source.get(p, 0) for p in relay_only),
    }


def range_jobs_figures(data: RunData, not_redone: Verdict) -> dict[str, Any]:
    """Range-jobs run: records flushed by range jobs, the jobs (attempts) worked, takeovers
    and the commits that recorded finished jobs (invariant 10's figures)."""
    rows = [r for r in data.sinks if r.get("job")]
    attempts = {(r["p"], *r["job"]) for r in rows}
    return {
        **not_redone.figures,
        "job_records_flushed": len(rows),
        "job_attempts_flushed": len(attempts),
        "jobs_flushed": len({a[:3] for a in attempts}),
        "partitions_with_jobs": sorted({r["p"] for r in rows}),
        "jobs_started": sum(1 for e in data.audits if e["kind"] == "job_start"),
    }


def summary(report: dict[str, Any]) -> str:
    """A few screens of plain text: what was injected, what held, what did not."""
    lines = [f"chaos run on {report['topic']} ({report['wall_s']} s wall)"]
    lines.append(
        "faults: " + ", ".join(f"{k}={n}" for k, n in sorted(report["fault_counts"].items()))
    )
    for f in report["faults"]:
        who = f.get("member") or f"node {f.get('node')}"
        lines.append(f"  +{f['at_s']:>7.1f}s {f['kind']:<14} {who} ({f['took_s']} s)")
    g = report["generations"]
    lines.append(f"generations: {g['count']} (ids {g['first']}..{g['last']})")
    r = report["records"]
    lines.append(
        f"records: produced {r['produced_acked']}, processed {r['processed_distinct']} "
        f"({r['processed_rows']} flushes), duplicated {r['duplicated']}, lost {r['lost']}; "
        f"commits sent {r['commits_sent']}, refused {r['commits_refused']}"
    )
    if report["duplicates_by_cause"]:
        lines.append(
            "duplicates by cause: "
            + ", ".join(f"{c}={n}" for c, n in report["duplicates_by_cause"].items())
        )
    relay = report.get("relay")
    if relay:
        lines.append(
            f"relay: {relay['relayed']} relayed (hops {relay['hops']}), "
            f"{relay['copies_flushed']} copies flushed; by source partition "
            f"{relay['relayed_by_source_partition']}; hot partition {relay['hot_partition']}; "
            f"relay-only {relay['relay_only_partitions']} "
            f"({relay['relayed_from_relay_only']} relayed from them)"
        )
    jobs = report.get("range_jobs")
    if jobs:
        lines.append(
            f"range jobs: {jobs['jobs_flushed']} jobs ({jobs['job_attempts_flushed']} attempts, "
            f"{jobs['job_records_flushed']} records) on partitions {jobs['partitions_with_jobs']}"
            f"; {jobs['commits_with_metadata']} commits with finished jobs in the metadata; "
            f"{jobs['takeovers']} takeovers, {jobs['takeovers_from_metadata']} from metadata "
            f"({jobs['finished_ranges_at_takeover']} finished ranges); redone {jobs['redone']}, "
            f"excused {jobs['excused']}"
        )
    lines.append("highest budget utilisation (partitions/max, buffered/budget, rss/limit):")
    for member, u in sorted(report["utilisation"].items()):
        lines.append(
            f"  {member:<4} {u.get('partitions', 0):.2f}  {u.get('bytes', 0):.2f}  "
            f"{u.get('rss', 0):.2f}"
        )
    rec = report["recovery"]
    if rec.get("recoveries"):
        lines.append(
            f"recovery after SIGKILL ({rec['recoveries']} partitions, bound {rec['bound_s']} s): "
            f"min {rec.get('min_s')} median {rec.get('median_s')} p90 {rec.get('p90_s')} "
            f"max {rec.get('max_s')}; excused (capacity short) {rec['excused_capacity_short']}"
        )
    short = rec.get("capacity_short_stretches", [])
    if short:
        examples = ", ".join(
            f"{s['unassigned']} unassigned at capacity {s['capacity']} for {s.get('s')} s"
            for s in short[:3]
        )
        total = sum(s.get("s", 0) for s in short)
        lines.append(
            f"capacity short with partitions unassigned: {len(short)} stretches, "
            f"{total:.1f} s in all (e.g. {examples})"
        )
    lines.append("invariants:")
    for v in report["verdicts"]:
        state = "SKIP" if v["skipped"] else ("PASS" if v["passed"] else "FAIL")
        lines.append(f"  {v['number']} {v['name']:<22} {state}  {v['summary']}")
        for e in v["evidence"][:5]:
            lines.append(f"      {e}")
    lines.append("RESULT: " + ("PASS" if report["passed"] else "FAIL"))
    return "\n".join(lines)
