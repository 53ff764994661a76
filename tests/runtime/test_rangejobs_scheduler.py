"""The range-job scheduler's decision core and the job messages, without a broker: the first
claim of an attempt wins, failed and timed-out jobs are offered again under a new attempt, a
late ``done`` still counts, commits carry the finished jobs beyond the frontier, and a takeover
from that metadata does not redo them."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from capgroup.runtime.rangejobs.jobs_wire import (
    JobMessage,
    JobState,
    Outcome,
    OutcomeMessage,
    decode_job,
    decode_outcome,
    encode_job,
    encode_outcome,
    job_key,
)
from capgroup.runtime.rangejobs.scheduler import PartitionScheduler, Publish
from capgroup.settings import CapgroupSettings, load_settings
from capgroup.types import TopicPartition

TP = TopicPartition("events", 0)


def settings(**kw: object) -> CapgroupSettings:
    base = {
        "group_id": "g",
        "topics": "events",
        "range_jobs_enabled": True,
        "range_jobs_max_records": 10,
        "range_jobs_max_in_flight": 3,
        "range_jobs_timeout_ms": 5_000,
    }
    return load_settings(**(base | kw))


def scheduler(committed: int = 0, metadata: str = "", **kw: object) -> PartitionScheduler:
    return PartitionScheduler(
        TP, committed, metadata, settings(**kw), member_id="m1", generation=7, wall_ms=lambda: 1000
    )


def offered(publishes: list[Publish]) -> list[JobMessage]:
    jobs = [decode_job(p.value) for p in publishes]
    assert all(j is not None for j in jobs)
    return [j for j in jobs if j is not None]


def outcome(kind: Outcome, job: JobMessage, worker: str = "w1") -> OutcomeMessage:
    return OutcomeMessage(kind, job.tp, job.start, job.end, job.attempt, worker)


def backlog(s: PartitionScheduler, first: int, last: int) -> None:
    s.window.cut([(o, 10) for o in range(first, last)], s.limits, upto=last)


# ------------------------------------------------------------------ the messages --------
def test_messages_round_trip_and_garbage_is_ignored() -> None:
    job = JobMessage(JobState.ASSIGN, TP, 10, 20, 2, "m1", 7, 10, 100, 5000, "w1")
    assert decode_job(encode_job(job)) == job
    report = OutcomeMessage(Outcome.DONE, TP, 10, 20, 2, "w1")
    assert decode_outcome(encode_outcome(report)) == report
    assert job_key(TP, 10, 20) == b"events/0/10-20"
    for garbage in [None, b"", b"{", b"[]", b'{"v": 2}', b'{"v": 1, "state": "nope"}']:
        assert decode_job(garbage) is None
        assert decode_outcome(garbage) is None
    bad = encode_job(job).replace(b'"start":10', b'"start":30')  # start past end
    assert decode_job(bad) is None


# ------------------------------------------------------------------ the scheduler -------
def test_first_claim_wins_and_done_tombstones_the_job() -> None:
    s = scheduler()
    backlog(s, 0, 30)
    jobs = offered(s.offers(0.0))
    assert [(j.start, j.end, j.state, j.attempt) for j in jobs] == [
        (0, 10, JobState.OFFER, 1),
        (10, 20, JobState.OFFER, 1),
        (20, 30, JobState.OFFER, 1),
    ]
    assign = offered(s.on_outcome(outcome(Outcome.CLAIM, jobs[0], "w1")))
    assert [(a.state, a.worker) for a in assign] == [(JobState.ASSIGN, "w1")]
    assert s.on_outcome(outcome(Outcome.CLAIM, jobs[0], "w2")) == []  # lost the race
    assert s.on_outcome(outcome(Outcome.DONE, jobs[0], "w1")) == [Publish(b"events/0/0-10", None)]
    assert s.commit_due() == (10, "")
    s.committed(10, "")
    assert s.commit_due() is None


def test_jobs_done_out_of_order_are_committed_in_the_metadata() -> None:
    s = scheduler()
    backlog(s, 0, 30)
    jobs = offered(s.offers(0.0))
    s.on_outcome(outcome(Outcome.DONE, jobs[2]))
    due = s.commit_due()
    assert due is not None
    assert due[0] == 0  # job [0, 10) is unfinished: the commit does not pass it
    assert due[1].startswith("cgr1")
    # A new owner takes over from that commit and does not redo [20, 30).
    successor = scheduler(*due)
    assert successor.window.finished.ranges == ((20, 30),)
    backlog(successor, 0, 30)
    assert [(j.start, j.end) for j in offered(successor.offers(0.0))] == [(0, 10), (10, 20)]


def test_ignoring_foreign_metadata_is_logged_and_redoes_everything() -> None:
    with capture_logs() as logs:
        s = scheduler(0, "some other tool's note")
    assert [e["reason"] for e in logs if e["event"] == "range_jobs_metadata_ignored"] == ["foreign"]
    backlog(s, 0, 30)
    assert len(offered(s.offers(0.0))) == 3


def test_a_failed_job_is_offered_again_with_the_next_attempt() -> None:
    s = scheduler(range_jobs_max_in_flight=1)
    backlog(s, 0, 20)
    (job,) = offered(s.offers(0.0))
    s.on_outcome(outcome(Outcome.CLAIM, job))
    assert s.on_outcome(outcome(Outcome.FAILED, job)) == []
    (again,) = offered(s.offers(1.0))
    assert (again.start, again.attempt) == (0, 2)
    # A late claim of attempt 1 is ignored; attempt 2's claim is assigned.
    assert s.on_outcome(outcome(Outcome.CLAIM, job, "w9")) == []
    assert offered(s.on_outcome(outcome(Outcome.CLAIM, again, "w2")))[0].worker == "w2"


def test_a_timed_out_job_is_offered_again_and_its_late_done_still_counts() -> None:
    s = scheduler(range_jobs_max_in_flight=1)
    backlog(s, 0, 20)
    (job,) = offered(s.offers(0.0))
    s.on_outcome(outcome(Outcome.CLAIM, job))
    assert offered(s.offers(4.0)) == []
    with capture_logs() as logs:
        (again,) = offered(s.offers(5.0))  # the worker froze: offered again
    assert again.attempt == 2
    assert [e["event"] for e in logs] == ["range_job_timed_out"]
    s.on_outcome(outcome(Outcome.DONE, job))  # the frozen worker wakes and finishes
    assert s.window.frontier == 10
    assert s.on_outcome(outcome(Outcome.CLAIM, again)) == []  # nothing left to assign


@pytest.mark.parametrize("kind", [Outcome.CLAIM, Outcome.DONE, Outcome.FAILED])
def test_messages_for_unknown_jobs_assign_nothing(kind: Outcome) -> None:
    s = scheduler()
    stray = JobMessage(JobState.OFFER, TP, 500, 510, 1, "old", 1)
    published = s.on_outcome(outcome(kind, stray))
    assert all(p.value is None for p in published)
    assert s.window.frontier == 0
