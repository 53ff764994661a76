"""Each chaos invariant on a small synthetic run: it passes the clean run and catches a
planted violation. No broker needed."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from capgroup.protocol.completed_ranges import CompletedRanges, encode_completed
from tests.chaos import invariants as inv
from tests.chaos.invariants import Limits, RunData

T0 = 1000.0
TOPIC = "t"


def _assign(member: str, gen: int, t: float, parts: list[int], **extra: Any) -> dict[str, Any]:
    return {
        "kind": "assign",
        "t": t,
        "member": member,
        "inc": 0,
        "gen": gen,
        "partitions": [[TOPIC, p] for p in parts],
        "buffered_bytes": 100,
        "max_partitions": 2,
        "budget": 10_000,
        **extra,
    }


def _sink(member: str, gen: int, t: float, p: int, offsets: range) -> list[dict[str, Any]]:
    return [
        {"t": t, "member": member, "inc": 0, "gen": gen, "topic": TOPIC, "p": p, "o": o}
        for o in offsets
    ]


def _commit(member: str, gen: int, t: float, offsets: dict[int, int], ok: bool = True) -> Any:
    return {
        "kind": "commit",
        "t": t + 0.01,
        "t_sent": t,
        "member": member,
        "inc": 0,
        "gen": gen,
        "offsets": [[TOPIC, p, o] for p, o in offsets.items()],
        "ok": ok,
    }


def clean_run() -> RunData:
    """Two members of capacity 2 share 4 partitions; b is killed at T0+20 and restarted,
    a zombie freeze of a happens at T0+40; every record is flushed and committed."""
    audits = [
        {"kind": "start", "t": T0, "member": m, "inc": 0, "max_partitions": 2, "budget": 10_000}
        for m in ("a", "b")
    ]
    audits += [
        _assign("a", 1, T0 + 1, [0, 1]),
        _assign("b", 1, T0 + 1, [2, 3]),
        {
            "kind": "rss",
            "t": T0 + 5,
            "member": "a",
            "inc": 0,
            "rss": 50_000_000,
            "buffered_bytes": 500,
            "budget": 10_000,
            "max_partitions": 2,
        },
    ]
    sinks = []
    for p, m in ((0, "a"), (1, "a"), (2, "b"), (3, "b")):
        sinks += _sink(m, 1, T0 + 10, p, range(10))
    audits += [_commit("a", 1, T0 + 11, {0: 10, 1: 10}), _commit("b", 1, T0 + 11, {2: 10, 3: 10})]
    # b is killed at T0+20; its incarnation 1 comes back with the same partitions in gen 2.
    audits += [
        {
            "kind": "start",
            "t": T0 + 22,
            "member": "b",
            "inc": 1,
            "max_partitions": 2,
            "budget": 10_000,
        },
        {**_assign("b", 2, T0 + 27, [2, 3]), "inc": 1},
        _assign("a", 2, T0 + 27, [0, 1]),
    ]
    # b's incarnation 0 flushed 10-11 of partition 2 but died before committing: incarnation 1
    # flushes them again (duplicates explained by the kill).
    sinks += _sink("b", 1, T0 + 19, 2, range(10, 12))
    sinks += [{**r, "inc": 1} for r in _sink("b", 2, T0 + 28, 2, range(10, 20))]
    sinks += [{**r, "inc": 1} for r in _sink("b", 2, T0 + 28, 3, range(10, 20))]
    sinks += _sink("a", 2, T0 + 28, 0, range(10, 20)) + _sink("a", 2, T0 + 28, 1, range(10, 20))
    audits += [
        {**_commit("b", 2, T0 + 29, {2: 20, 3: 20}), "inc": 1},
        _commit("a", 2, T0 + 29, {0: 20, 1: 20}),
    ]
    # a is frozen at T0+40 and woken at T0+50; its commit attempt after waking is refused
    # locally (never sent), so nothing is audited; it rejoins in gen 3.
    audits += [_assign("a", 3, T0 + 52, [0, 1]), {**_assign("b", 3, T0 + 52, [2, 3]), "inc": 1}]
    produced = [
        {"seq": i, "p": p, "o": o, "t": T0 + (25 if o >= 10 else 5)}
        for i, (p, o) in enumerate((p, o) for p in range(4) for o in range(20))
    ]
    return RunData(
        topic=TOPIC,
        partitions=4,
        limits=Limits(session_timeout_s=6.0),
        sinks=sinks,
        audits=audits,
        produced=produced,
        committed={0: 20, 1: 20, 2: 20, 3: 20},
        faults=[
            {"kind": "sigkill", "t": T0 + 20, "t_end": T0 + 22, "member": "b", "inc": 0},
            {
                "kind": "zombie",
                "t": T0 + 40,
                "t_stop": T0 + 40,
                "t_cont": T0 + 50,
                "t_end": T0 + 50,
                "member": "a",
                "inc": 0,
            },
        ],
        incarnations=[
            {"member": "a", "inc": 0, "start_t": T0, "end_t": None, "max_partitions": 2},
            {"member": "b", "inc": 0, "start_t": T0, "end_t": T0 + 20, "max_partitions": 2},
            {"member": "b", "inc": 1, "start_t": T0 + 22, "end_t": None, "max_partitions": 2},
        ],
        end_t=T0 + 60,
    )


def test_clean_run_passes_every_invariant() -> None:
    verdicts = inv.check_all(clean_run())
    failed = [(v.name, v.evidence) for v in verdicts if not v.passed]
    assert not failed
    assert [v.number for v in verdicts] == [1, 2, 3, 4, 5, 6, 7]
    assert not any(v.skipped for v in verdicts)
    dup = verdicts[4]
    assert dup.figures["duplicates"] == 2
    assert list(dup.figures["by_cause"]) == ["sigkill@1020.0:b"]


def test_ranges_compresses_offsets() -> None:
    assert inv.ranges([5, 1, 2, 3, 7]) == ["1-3", "5", "7"]
    assert inv.ranges(range(0, 100, 2), limit=2) == ["0", "2", "... 48 more ranges"]


# ------------------------------------------------------------------ planted faults ---


def test_overload_partitions_caught() -> None:
    run = clean_run()
    run.audits.append(_assign("a", 4, T0 + 55, [0, 1, 2]))
    v = inv.no_overload(run)
    assert not v.passed
    assert v.evidence == [
        {
            "member": "a",
            "inc": 0,
            "gen": 4,
            "partitions": 3,
            "max_partitions": 2,
            "first_assignment": False,
            "held_s": None,
        }
    ]


def test_overload_bytes_and_rss_caught() -> None:
    run = clean_run()
    run.audits.append(
        {
            "kind": "rss",
            "t": T0 + 30,
            "member": "b",
            "inc": 1,
            "rss": 10_000 + 200 * 2**20,
            "buffered_bytes": 10_001,
            "budget": 10_000,
            "max_partitions": 2,
        }
    )
    v = inv.no_overload(run)
    assert not v.passed
    assert {"member": "b", "inc": 1, "buffered_bytes": 10_001, "budget": 10_000} in v.evidence
    assert any("rss" in e for e in v.evidence)


def test_same_generation_double_owner_caught() -> None:
    run = clean_run()
    run.audits.append(_assign("b", 3, T0 + 53, [2, 3, 0]))
    v = inv.no_double_ownership(run)
    assert not v.passed
    assert {"generation": 3, "partition": 0, "members": ["a", "b"]} in v.evidence


def test_overlap_in_time_caught_but_zombie_overlap_allowed() -> None:
    run = clean_run()
    # c takes partition 0 in a generation of its own while a still holds it, a not frozen.
    run.audits.append({**_assign("c", 9, T0 + 30, [0]), "member": "c"})
    run.incarnations.append({"member": "c", "inc": 0, "start_t": T0 + 29, "end_t": T0 + 35})
    v = inv.no_double_ownership(run)
    assert not v.passed
    assert v.evidence[0]["partition"] == 0
    assert sorted(o[0] for o in v.evidence[0]["owners"]) == ["a", "c"]
    # The same overlap while a is frozen (SIGSTOP) is the hand-off away from a zombie.
    zombie = copy.deepcopy(run)
    zombie.faults.append(
        {"kind": "zombie", "t": T0 + 29, "t_stop": T0 + 29, "t_cont": T0 + 36, "member": "a"}
    )
    assert inv.no_double_ownership(zombie).passed


def test_zombie_that_keeps_owning_after_waking_caught() -> None:
    run = clean_run()
    run.audits.append({**_assign("c", 9, T0 + 30, [0]), "member": "c"})
    run.incarnations.append({"member": "c", "inc": 0, "start_t": T0 + 29, "end_t": T0 + 35})
    # a was frozen T0+29..T0+31 but still held partition 0 when c's ownership ended (T0+35).
    run.faults.append(
        {"kind": "zombie", "t": T0 + 29, "t_stop": T0 + 29, "t_cont": T0 + 31, "member": "a"}
    )
    v = inv.no_double_ownership(run)
    assert not v.passed
    assert v.evidence[0]["partition"] == 0


def test_loss_caught() -> None:
    run = clean_run()
    run.sinks = [r for r in run.sinks if not (r["p"] == 1 and 12 <= r["o"] <= 14)]
    v = inv.no_loss(run)
    assert not v.passed
    assert v.evidence == [{"partition": 1, "missing": ["12-14"]}]


def test_commit_past_flush_caught_at_the_end() -> None:
    run = clean_run()
    run.committed[3] = 25
    v = inv.honest_commits(run)
    assert not v.passed
    assert v.evidence[0]["partition"] == 3
    assert v.evidence[0]["highest_flushed"] == 19


def test_commit_before_flush_caught_during_the_run() -> None:
    run = clean_run()
    # a commits 0..29 of partition 0 before flushing 20..29 (they reach the sink later):
    # the final offsets look honest, the commit was not.
    run.audits.append(_commit("a", 3, T0 + 53, {0: 30}))
    run.sinks += _sink("a", 3, T0 + 58, 0, range(20, 30))
    run.committed[0] = 30
    v = inv.honest_commits(run)
    assert not v.passed
    assert v.evidence == [
        {
            "partition": 0,
            "commit": 30,
            "member": "a",
            "inc": 0,
            "gen": 3,
            "not_flushed_before_commit": ["20-29"],
        }
    ]


def test_unexplained_duplicate_caught() -> None:
    run = clean_run()
    # a flushes partition 0's 5..6 again in gen 2 with no fault, loss or discard to explain it.
    run.sinks += _sink("a", 2, T0 + 30, 0, range(5, 7))
    v = inv.bounded_duplicates(run)
    assert not v.passed
    assert [e["offset"] for e in v.evidence] == [5, 6]
    # A discard audited by the first flusher explains them.
    run.audits.append(
        {
            "kind": "discard",
            "t": T0 + 15,
            "member": "a",
            "inc": 0,
            "p": 0,
            "first": 5,
            "last": 6,
            "reason": "revoke",
        }
    )
    assert inv.bounded_duplicates(run).passed


def test_graceful_stop_does_not_excuse_duplicates() -> None:
    run = clean_run()
    run.sinks += _sink("a", 2, T0 + 30, 0, range(5, 7))
    run.faults.append({"kind": "sigterm", "t": T0 + 25, "t_end": T0 + 26, "member": "a"})
    assert not inv.bounded_duplicates(run).passed


def test_slow_recovery_caught() -> None:
    run = clean_run()
    # Nobody flushes partition 3 again until 40 s after b's kill though capacity was there.
    run.sinks = [r for r in run.sinks if not (r["p"] == 3 and r["t"] > T0 + 20)]
    run.sinks += [{**r, "inc": 1} for r in _sink("b", 2, T0 + 60, 3, range(10, 20))]
    v = inv.recovery(run)
    assert not v.passed
    assert v.evidence[0]["partition"] == 3
    assert v.evidence[0]["seconds"] == 40.0


def test_slow_recovery_excused_when_capacity_is_short() -> None:
    run = clean_run()
    run.sinks = [r for r in run.sinks if not (r["p"] in (2, 3) and r["t"] > T0 + 20)]
    # b's restart came late and joined only at T0+56: until then a alone (capacity 2) cannot
    # hold 4 partitions; partitions 2 and 3 are flushed again 4 s after b joined.
    run.incarnations[2]["start_t"] = T0 + 55
    for e in run.audits:
        if e["member"] == "b" and e["inc"] == 1 and e["kind"] in ("assign", "commit"):
            e["t"] = e["t_sent"] = T0 + 56
    run.sinks += [{**r, "inc": 1} for r in _sink("b", 2, T0 + 60, 2, range(10, 20))]
    run.sinks += [{**r, "inc": 1} for r in _sink("b", 2, T0 + 60, 3, range(10, 20))]
    v = inv.recovery(run)
    assert v.passed, v.evidence
    assert v.figures["excused_capacity_short"] == 2


def test_unassigned_with_spare_capacity_caught() -> None:
    run = clean_run()
    # Generations 4..6 leave partition 3 unassigned for 30 s though a and b have room.
    for gen, t in ((4, T0 + 60), (5, T0 + 75), (6, T0 + 90)):
        run.audits += [_assign("a", gen, t, [0, 1]), {**_assign("b", gen, t, [2]), "inc": 1}]
    run.end_t = T0 + 100
    v = inv.recovery(run)
    assert not v.passed
    assert v.evidence[0]["unassigned"] == [3]


def test_unassigned_while_capacity_short_is_allowed_and_reported() -> None:
    run = clean_run()
    # b's second incarnation dies at T0+58 for good: a alone (capacity 2) leaves 2 and 3
    # unassigned for the remaining 42 s, which is no violation, only a reported shortage.
    run.incarnations[2]["end_t"] = T0 + 58
    run.end_t = T0 + 100
    v = inv.recovery(run)
    assert v.passed, v.evidence
    # The first shortage is b's kill at T0+20 (until its restart joined at T0+27).
    killed, gone = v.figures["capacity_short_stretches"]
    assert killed == {"from": T0 + 20, "unassigned": 2, "capacity": 2, "s": 7.0}
    assert gone == {"from": T0 + 58, "unassigned": 2, "capacity": 2, "s": 42.0}


def test_zombie_commit_after_wake_caught() -> None:
    run = clean_run()
    run.audits.append({**_commit("a", 2, T0 + 50.3, {0: 20}, ok=False), "error": "25"})
    v = inv.zombies_never_commit(run)
    assert not v.passed
    assert v.evidence[0]["gen"] == 2
    assert v.evidence[0]["frozen_gen"] == 2
    assert v.evidence[0]["accepted"] is False


def test_zombie_commit_under_new_generation_is_fine() -> None:
    run = clean_run()
    run.audits.append(_commit("a", 3, T0 + 53, {0: 20}))
    assert inv.zombies_never_commit(run).passed


@pytest.mark.parametrize("check", inv.ALL, ids=lambda c: c.__name__)
def test_empty_run_is_skipped_not_passed(check: Any) -> None:
    empty = RunData(topic=TOPIC, partitions=4, limits=Limits(session_timeout_s=6.0))
    verdict = check(empty)
    assert verdict.skipped


def test_graceful_stop_ends_ownership_before_the_takeover() -> None:
    run = clean_run()
    # c takes partition 0 at T0+30; a's process lives on until T0+35, but it had drained
    # and released everything at T0+29.5 (graceful shutdown): no overlap.
    run.audits.append({**_assign("c", 9, T0 + 30, [0]), "member": "c"})
    run.incarnations.append({"member": "c", "inc": 0, "start_t": T0 + 29, "end_t": T0 + 35})
    run.incarnations[0]["end_t"] = T0 + 35
    assert not inv.no_double_ownership(run).passed
    run.audits.append({**_assign("a", 2, T0 + 29.5, []), "kind": "stop"})
    assert inv.no_double_ownership(run).passed


# ------------------------------------------------------------------ relay runs -------


def _relay(
    member: str, gen: int, t: float, moves: list[tuple[int, int, int, int]], **extra: Any
) -> dict[str, Any]:
    """An ``on_records_relayed`` audit event: ``moves`` are (p, o, dest_p, hops)."""
    return {
        "kind": "relay",
        "t": t,
        "member": member,
        "inc": 0,
        "gen": gen,
        "relayed": [[TOPIC, p, o, TOPIC, d, h] for p, o, d, h in moves],
        **extra,
    }


def _copies(
    member: str, gen: int, t: float, p: int, at: range, origin_p: int, origin: range
) -> list[dict[str, Any]]:
    """Relayed copies flushed at ``p``/``at`` standing for ``origin_p``/``origin``."""
    rows = _sink(member, gen, t, p, at)
    for r, o in zip(rows, origin, strict=True):
        r["origin"] = [TOPIC, origin_p, o]
        r["hops"] = 1
    return rows


def relay_run() -> RunData:
    """The clean run, relay on: partition 0's records 20..24 (produced at T0+25) are relayed
    by a (which owns 0 and 1) to partition 2 (b's), acknowledged at T0+30, committed at
    T0+31; b flushes the copies (partition 2, offsets 20..24) at T0+33 and commits them."""
    run = clean_run()
    run.limits = Limits(session_timeout_s=6.0, relay_max_hops=3)
    run.produced += [{"seq": 100 + o, "p": 0, "o": o, "t": T0 + 25} for o in range(20, 25)]
    run.audits.append(
        _relay(
            "a", 2, T0 + 30, [(0, o, 2, 1) for o in range(20, 25)], owned=[[TOPIC, 0], [TOPIC, 1]]
        )
    )
    run.audits.append(_commit("a", 2, T0 + 31, {0: 25}))
    run.sinks += [
        {**r, "inc": 1} for r in _copies("b", 2, T0 + 33, 2, range(20, 25), 0, range(20, 25))
    ]
    run.audits.append({**_commit("b", 2, T0 + 34, {2: 25}), "inc": 1})
    run.committed[0] = 25
    run.committed[2] = 25
    return run


def test_clean_relay_run_passes_every_invariant() -> None:
    verdicts = inv.check_all(relay_run())
    assert [v.number for v in verdicts] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert not [(v.name, v.evidence) for v in verdicts if not v.passed]
    assert not any(v.skipped for v in verdicts)
    assert verdicts[7].figures["hops"] == {1: 5}
    assert verdicts[7].figures["relayed_by_source_partition"] == {0: 5}


def test_relay_invariants_only_in_relay_runs() -> None:
    assert [v.number for v in inv.check_all(clean_run())] == [1, 2, 3, 4, 5, 6, 7]


def test_relayed_record_lost_caught() -> None:
    run = relay_run()
    # The copies of 22..23 never reach a sink: relayed (and committed) is not processed.
    run.sinks = [r for r in run.sinks if not (r["p"] == 2 and r["o"] in (22, 23))]
    v = inv.no_loss(run)
    assert not v.passed
    assert v.evidence == [{"partition": 0, "missing": ["22-23"]}]
    # A copy without its origin header does not stand for the record either.
    run = relay_run()
    for r in run.sinks:
        r.pop("origin", None)
    assert inv.no_loss(run).evidence == [{"partition": 0, "missing": ["20-24"]}]


def test_relay_over_the_hop_limit_caught() -> None:
    run = relay_run()
    run.audits.append(_relay("a", 2, T0 + 35, [(0, 30, 3, 4)]))
    v = inv.hop_limit(run)
    assert not v.passed
    assert v.evidence == [
        {"relay": ["a", 0, 2, T0 + 35], "from": [0, 30], "to": 3, "hops": 4, "limit": 3}
    ]
    # A flushed copy past the limit (relayed further by someone who did not count) too.
    run = relay_run()
    run.sinks[-1]["hops"] = 5
    v = inv.hop_limit(run)
    assert not v.passed
    assert v.evidence[0]["hops"] == 5
    assert v.evidence[0]["origin"] == [TOPIC, 0, 24]


def test_relay_to_an_owned_partition_caught() -> None:
    run = relay_run()
    # a relays partition 0's offset 25 to partition 1, which it has owned since T0+1.
    run.audits.append(_relay("a", 2, T0 + 36, [(0, 25, 1, 1)], owned=[[TOPIC, 0], [TOPIC, 1]]))
    v = inv.no_relay_to_self(run)
    assert not v.passed
    assert v.evidence == [
        {"member": "a", "inc": 0, "gen": 2, "t": T0 + 36, "from": [0, 25], "to": 1, "owned": [0, 1]}
    ]


def test_relay_to_a_partition_gained_during_the_produce_is_not_self() -> None:
    run = relay_run()
    # a gains partition 2 at T0+40.0; the relay to 2 acknowledged at T0+40.2 was chosen before.
    run.audits.append(_assign("a", 5, T0 + 40, [0, 1, 2]))
    run.audits.append(_relay("a", 5, T0 + 40.2, [(0, 26, 2, 1)]))
    assert inv.no_relay_to_self(run).passed
    # ... but a second later it should know better.
    run.audits.append(_relay("a", 5, T0 + 41.2, [(0, 27, 2, 1)]))
    assert not inv.no_relay_to_self(run).passed


def test_relay_member_without_assignment_trail_judged_by_its_snapshot() -> None:
    run = relay_run()
    run.audits.append({**_relay("r", 2, T0 + 36, [(0, 25, 3, 1)], owned=[[TOPIC, 3]])})
    v = inv.no_relay_to_self(run)
    assert not v.passed
    assert v.evidence[0]["member"] == "r"


def test_commit_before_the_relay_ack_caught() -> None:
    run = relay_run()
    # a commits partition 0 up to 25 at T0+28, before the relay was acknowledged (T0+30).
    run.audits.append(_commit("a", 2, T0 + 28, {0: 25}))
    v = inv.honest_commits(run)
    assert not v.passed
    assert v.evidence[0]["partition"] == 0
    assert v.evidence[0]["not_flushed_before_commit"] == ["20-24"]


def test_relayed_duplicate_must_be_attributed() -> None:
    run = relay_run()
    # a relays 20..24 again at T0+35 (a second copy at partition 2, 30..34, flushed by b at
    # T0+37): with no fault of a in between nothing explains the duplicate.
    run.audits.append(_relay("a", 2, T0 + 35, [(0, o, 2, 1) for o in range(20, 25)]))
    run.sinks += [
        {**r, "inc": 1} for r in _copies("b", 2, T0 + 37, 2, range(30, 35), 0, range(20, 25))
    ]
    v = inv.bounded_duplicates(run)
    assert not v.passed
    assert v.evidence[0]["offset"] == 20
    assert v.evidence[0]["copies"] == [[2, 20], [2, 30]]
    # A SIGKILL of the relaying member between the relays explains all five.
    run.faults.append({"kind": "sigkill", "t": T0 + 34, "t_end": T0 + 35, "member": "a", "inc": 0})
    v = inv.bounded_duplicates(run)
    assert v.passed, v.evidence
    assert v.figures["by_cause"] == {"sigkill@1020.0:b": 2, "sigkill@1034.0:a": 5}


@pytest.mark.parametrize("check", inv.RELAY, ids=lambda c: c.__name__)
def test_relay_run_without_relays_is_skipped(check: Any) -> None:
    empty = RunData(
        topic=TOPIC, partitions=4, limits=Limits(session_timeout_s=6.0, relay_max_hops=3)
    )
    assert check(empty).skipped


def test_copy_relayed_twice_resolves_to_its_produced_record() -> None:
    run = relay_run()
    # b relays the copy at partition 2 offset 20 (origin 0/20) on to partition 1 (hops 2);
    # a flushes that second copy at partition 1 offset 20, whose origin header is 2/20.
    run.sinks = [r for r in run.sinks if not (r["p"] == 2 and r["o"] == 20)]
    run.audits.append(
        {
            **_relay("b", 2, T0 + 33.5, []),
            "inc": 1,
            "relayed": [[TOPIC, 2, 20, TOPIC, 1, 2, [TOPIC, 0, 20]]],
        }
    )
    second = _copies("a", 2, T0 + 35, 1, range(20, 21), 2, range(20, 21))
    second[0]["hops"] = 2
    run.sinks += second
    verdicts = inv.check_all(run)
    assert not [(v.name, v.evidence) for v in verdicts if not v.passed]
    assert verdicts[7].figures["hops"] == {1: 5, 2: 1}
    # Without the relaying member's record of where the copy came from, 0/20 is missing.
    run.audits[-1]["relayed"][0][-1] = None
    assert inv.no_loss(run).evidence == [{"partition": 0, "missing": ["20"]}]


def test_relay_to_a_partition_nobody_owns_caught() -> None:
    run = relay_run()
    # Partition 4 is in no assignment (capacity short): a copy there is processed by nobody.
    run.partitions = 5
    run.audits.append(_relay("a", 2, T0 + 36, [(0, 25, 4, 1), (0, 26, 4, 1)]))
    v = inv.no_relay_to_self(run)
    assert not v.passed
    assert v.evidence == [
        {
            "member": "a",
            "inc": 0,
            "t": T0 + 36,
            "from": [0, 25],
            "to": 4,
            "to_unowned_partition": True,
        }
    ]
    assert v.figures["to_unowned_partition"] == {4: 2}


# ------------------------------------------------------------------ range-jobs runs --


def _metadata(base: int, *finished: tuple[int, int]) -> str:
    return encode_completed(CompletedRanges(base, finished))


def _jobs(
    member: str,
    inc: int,
    t: float,
    p: int,
    job: tuple[int, int, int],
    assigned_t: float,
    sched: str,
) -> list[dict[str, Any]]:
    """The sink rows of one range-job attempt ``job`` = (start, end, attempt)."""
    return [
        {**r, "inc": inc, "job": list(job), "assigned_t": assigned_t, "sched": sched}
        for r in _sink(member, 2, t, p, range(job[0], job[1]))
    ]


def range_jobs_run() -> RunData:
    """The clean run, range jobs on: partition 0's records 20..29 (produced at T0+25) are a
    backlog; its owner a takes it over for range jobs at T0+30 from its commit 20 and cuts
    two jobs; b works [25, 30) first (assigned T0+30.5, flushed T0+31), a's commit at T0+31.5
    keeps offset 20 and records [25, 30) in the metadata; b then works [20, 25) (flushed
    T0+33) and a commits 30."""
    run = clean_run()
    run.limits = Limits(session_timeout_s=6.0, range_jobs=True)
    run.produced += [{"seq": 200 + o, "p": 0, "o": o, "t": T0 + 25} for o in range(20, 30)]
    run.audits.append(
        {
            "kind": "rj_take",
            "t": T0 + 30,
            "member": "a",
            "inc": 0,
            "gen": 2,
            "topic": TOPIC,
            "p": 0,
            "committed": 20,
            "metadata": "",
            "known": 0,
        }
    )
    run.sinks += _jobs("b", 1, T0 + 31, 0, (25, 30, 1), T0 + 30.5, "a")
    run.audits.append(
        {**_commit("a", 2, T0 + 31.5, {0: 20}), "metadata": [[TOPIC, 0, _metadata(20, (25, 30))]]}
    )
    run.sinks += _jobs("b", 1, T0 + 33, 0, (20, 25, 1), T0 + 30.6, "a")
    run.audits.append(_commit("a", 2, T0 + 33.5, {0: 30}))
    run.committed[0] = 30
    return run


def _takeover(member: str, inc: int, t: float, committed: int, metadata: str) -> dict[str, Any]:
    known = len(inv.finished_ranges(metadata, committed))
    return {
        "kind": "rj_take",
        "t": t,
        "member": member,
        "inc": inc,
        "gen": 3,
        "topic": TOPIC,
        "p": 0,
        "committed": committed,
        "metadata": metadata,
        "known": known,
    }


def test_clean_range_jobs_run_passes_every_invariant() -> None:
    verdicts = inv.check_all(range_jobs_run())
    assert [v.number for v in verdicts] == [1, 2, 3, 4, 5, 6, 7, 10]
    assert not [(v.name, v.evidence) for v in verdicts if not v.passed]
    assert not any(v.skipped for v in verdicts)
    assert verdicts[-1].figures["commits_with_metadata"] == 1
    assert verdicts[-1].figures["redone"] == 0


def test_range_jobs_invariant_only_in_range_jobs_runs() -> None:
    assert 10 not in [v.number for v in inv.check_all(clean_run())]


def test_commit_past_an_unfinished_job_caught() -> None:
    run = range_jobs_run()
    # The scheduler commits 30 at T0+31.5: past [20, 25), which is flushed only at T0+33.
    run.audits.append(_commit("a", 2, T0 + 31.6, {0: 30}))
    v = inv.honest_commits(run)
    assert not v.passed
    assert v.evidence[0]["not_flushed_before_commit"] == ["20-24"]


def test_metadata_recording_an_unfinished_job_caught() -> None:
    run = range_jobs_run()
    # A commit at T0+30.3 records [25, 30) as finished; b flushes it only at T0+31.
    run.audits.append(
        {**_commit("a", 2, T0 + 30.3, {0: 20}), "metadata": [[TOPIC, 0, _metadata(20, (25, 30))]]}
    )
    v = inv.honest_commits(run)
    assert not v.passed
    assert v.evidence[0]["commit"] == 20
    assert v.evidence[0]["not_flushed_before_commit"] == ["25-29"]


def test_next_owner_redoing_a_recorded_job_caught() -> None:
    run = range_jobs_run()
    # a is SIGKILLed at T0+32 (before its last commit); c takes partition 0 over from the
    # commit (20, [25, 30) finished) and yet assigns [25, 30) again, flushed by b at T0+36.
    run.audits = [e for e in run.audits if not (e["kind"] == "commit" and e["t_sent"] > T0 + 33)]
    run.faults.append({"kind": "sigkill", "t": T0 + 32, "t_end": T0 + 33, "member": "a", "inc": 0})
    run.audits.append(_takeover("c", 0, T0 + 34, 20, _metadata(20, (25, 30))))
    run.sinks += _jobs("b", 1, T0 + 36, 0, (25, 30, 1), T0 + 35, "c")
    v = inv.metadata_jobs_not_redone(run)
    assert not v.passed
    assert v.evidence == [
        {
            "partition": 0,
            "offset": 25,
            "flushed": ["b", 1, T0 + 36],
            "job": [25, 30, 1],
            "sched": "c",
            "recorded_by": ["a", 0, 2, T0 + 31.5],
            "commit": 20,
            "recorded": [[25, 30]],
            "records": 5,
        }
    ]
    assert v.figures["takeovers_from_metadata"] == 1
    # Skipping the recorded job and redoing only [20, 25) is fine.
    run.sinks = [r for r in run.sinks if r["t"] != T0 + 36]
    run.sinks += _jobs("b", 1, T0 + 36, 0, (20, 25, 1), T0 + 35, "c")
    assert inv.metadata_jobs_not_redone(run).passed


def test_recorded_job_flushed_again_is_excused_only_by_its_own_history() -> None:
    run = range_jobs_run()
    # b flushes [25, 30) again at T0+34 under an attempt a assigned at T0+30.8, before the
    # commit that recorded it (T0+31.5): that attempt was in progress.
    run.sinks += _jobs("m", 0, T0 + 34, 0, (25, 30, 2), T0 + 30.8, "a")
    v = inv.metadata_jobs_not_redone(run)
    assert v.passed, v.evidence
    assert v.figures["excused"] == {"assigned_before_commit": 5}
    # Assigned after the commit, with nothing frozen: redone.
    for r in run.sinks[-5:]:
        r["assigned_t"] = T0 + 33.8
    assert not inv.metadata_jobs_not_redone(run).passed
    # ... unless its flusher was a zombie working what it held.
    run.faults.append(
        {"kind": "zombie", "t": T0 + 33, "t_stop": T0 + 33, "t_cont": T0 + 33.9, "member": "m"}
    )
    v = inv.metadata_jobs_not_redone(run)
    assert v.passed, v.evidence
    assert v.figures["excused"] == {"flusher_zombie": 5}


def test_range_job_duplicates_attributed() -> None:
    run = range_jobs_run()
    # [25, 30) flushed again by m under a second attempt (the first one timed out): the job
    # was reoffered, which explains it.
    run.sinks += _jobs("m", 0, T0 + 34, 0, (25, 30, 2), T0 + 30.8, "a")
    v = inv.bounded_duplicates(run)
    assert v.passed, v.evidence
    assert v.figures["by_cause"]["job_reoffered@1031.0:a"] == 5
    # The same attempt flushed twice by a new scheduler's job, with no fault: unexplained.
    run = range_jobs_run()
    run.sinks += _jobs("m", 0, T0 + 38, 0, (20, 25, 1), T0 + 37, "c")
    assert not inv.bounded_duplicates(run).passed
    # A SIGKILL of the scheduler that assigned the first flush's job explains it.
    run.faults.append({"kind": "sigkill", "t": T0 + 36, "t_end": T0 + 37, "member": "a", "inc": 0})
    v = inv.bounded_duplicates(run)
    assert v.passed, v.evidence
    assert v.figures["by_cause"]["scheduler_sigkill@1036.0:a"] == 5


@pytest.mark.parametrize("check", inv.RANGE_JOBS, ids=lambda c: c.__name__)
def test_range_jobs_run_without_metadata_is_skipped(check: Any) -> None:
    empty = RunData(
        topic=TOPIC, partitions=4, limits=Limits(session_timeout_s=6.0, range_jobs=True)
    )
    assert check(empty).skipped


def test_zombie_flushing_first_on_waking_explains_the_redo() -> None:
    run = range_jobs_run()
    # m worked [20, 25) for scheduler a (instead of b), was frozen T0+30.7..T0+34.7 and
    # flushed it on waking (T0+34.8); a new scheduler's attempt flushed by b at T0+35.5 came
    # after the zombie's flush, yet it is the zombie's doing.
    run.sinks = [r for r in run.sinks if r.get("job") != [20, 25, 1]]
    run.sinks += _jobs("m", 0, T0 + 34.8, 0, (20, 25, 1), T0 + 30.6, "a")
    run.sinks += _jobs("b", 1, T0 + 35.5, 0, (20, 25, 1), T0 + 35, "c")
    assert not inv.bounded_duplicates(run).passed
    run.faults.append(
        {
            "kind": "zombie",
            "t": T0 + 30.7,
            "t_stop": T0 + 30.7,
            "t_cont": T0 + 34.7,
            "t_end": T0 + 34.7,
            "member": "m",
        }
    )
    v = inv.bounded_duplicates(run)
    assert v.passed, v.evidence
    assert v.figures["by_cause"]["zombie@1030.7:m"] == 5
