"""A chaos schedule for range jobs against a real broker (issue 14), short enough for CI.

One owner (the membership engine alone, making the fenced commits), a scheduler and three
workers, in one process; a fault is a cancellation without any report (a **kill**: the task's
claims and flushes vanish, as with SIGKILL) or a flush stalled past the job timeout (a
**freeze**: the worker wakes up and reports late, as after SIGSTOP/SIGCONT). The schedule:

1. the first job straggles (its flush waits) so later jobs finish beyond the frontier;
2. worker ``w1`` is killed in the middle of a flush (its job times out and is offered again);
3. worker ``w2`` freezes in a flush for longer than the job timeout (offered again; both
   copies finish: duplicates);
4. once a commit carried finished jobs in its metadata, the scheduler is killed and a new one
   takes over from the committed offset and metadata; then the straggler is released.

Invariants, judged on the recorded events (:func:`verdicts`):

- **no loss**: every record is flushed;
- **gap-free commits**: every commit, when sent, covered only records already flushed: all
  below the committed offset and all in the finished ranges of its metadata;
- **takeover skips finished jobs**: the new scheduler assigns no job covering a record the
  committed metadata records as finished;
- **duplicates attributed**: every record flushed twice belongs to a job hit by a fault (the
  frozen worker's job), or was not covered by the commit the new scheduler took over from (a
  stateless scheduler redoes finished but uncommitted jobs).

Planted bugs (``PLANTS``) must each make an invariant fail: ``commit_past_unfinished`` (the
scheduler commits its cursor, past unfinished jobs) and ``ignore_metadata`` (the new owner
ignores the committed metadata).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from capgroup import Batch, TopicPartition
from capgroup.protocol import completed_ranges
from capgroup.protocol.completed_ranges import DecodedRanges, decode_completed
from capgroup.runtime.rangejobs import scheduler as scheduler_module
from capgroup.runtime.rangejobs.jobs_wire import JobMessage
from capgroup.runtime.rangejobs.scheduler import PartitionScheduler, RangeJobScheduler
from capgroup.runtime.rangejobs.service import range_job_clients
from capgroup.runtime.rangejobs.worker import RangeJobWorker
from capgroup.settings import CapgroupSettings
from tests.runtime.harness import produce, wait_until
from tests.runtime.rangejobs_harness import owner, rangejobs_settings, scheduler_over, tg_enter

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

RECORDS = 400
JOB = 20
#: Long enough that a job never times out on a loaded machine without a fault.
TIMEOUT_MS = 4_000
PLANTS = ("commit_past_unfinished", "ignore_metadata")


@dataclass
class Events:
    """What the schedule did and saw (times on the event loop's clock)."""

    started: list[tuple[float, str, int, int]] = field(default_factory=list)
    #: Jobs a worker was assigned: (time, worker, scheduler that assigned it, start, end).
    assigned: list[tuple[float, str, str, int, int]] = field(default_factory=list)
    flushed: list[tuple[float, str, int, int]] = field(default_factory=list)
    commits: list[tuple[float, int, str]] = field(default_factory=list)
    #: A scheduler taking the partition over: (time, scheduler, committed, metadata).
    takeovers: list[tuple[float, str, int, str]] = field(default_factory=list)
    faults: list[tuple[float, str, str, int, int]] = field(default_factory=list)

    def durable_at(self, t: float) -> set[int]:
        """Offsets whose flush returned before ``t``."""
        return {o for when, _, s, e in self.flushed if when < t for o in range(s, e)}


def verdicts(events: Events, records: int) -> dict[str, list[str]]:
    """Each invariant's evidence of failure (empty: it held)."""
    found: dict[str, list[str]] = {}
    flushed = Counter(o for _, _, s, e in events.flushed for o in range(s, e))
    found["no_loss"] = [f"offset {o} never flushed" for o in range(records) if o not in flushed]
    gap = []
    for t, offset, metadata in events.commits:
        durable = events.durable_at(t)
        covered = set(range(offset))
        covered |= {
            o for s, e in decode_completed(metadata, offset).ranges.ranges for o in range(s, e)
        }
        missing = sorted(covered - durable)
        if missing:
            gap.append(f"commit {offset} at {t:.2f} covers unflushed {missing[:5]}")
    found["gap_free_commits"] = gap
    redone = []
    for _, name, committed, metadata in events.takeovers:
        recorded = decode_completed(metadata, committed).ranges
        # Work the new scheduler handed out (a job of the old one may still be finishing).
        for _, worker, by, s, e in events.assigned:
            hit = [o for o in range(s, e) if by == name and recorded.contains(o)]
            if hit:
                redone.append(f"{worker} redid {hit[0]}..{hit[-1]} recorded at the takeover")
    found["takeover_skips_finished"] = redone
    excused: set[int] = set()
    for _, kind, _, s, e in events.faults:
        if kind == "freeze":
            excused |= set(range(s, e))
    for _, _, committed, metadata in events.takeovers:
        recorded = decode_completed(metadata, committed).ranges
        excused |= {o for o in range(committed, records) if not recorded.contains(o)}
    found["duplicates_attributed"] = [
        f"offset {o} flushed {n} times, no fault explains it"
        for o, n in sorted(flushed.items())
        if n > 1 and o not in excused
    ]
    return found


class Chaos:
    """The workers' flush, with the faults of the schedule."""

    def __init__(self, events: Events) -> None:
        self.events = events
        self.scopes: dict[str, anyio.CancelScope] = {}
        self.straggler = anyio.Event()
        self.kill_w1 = True
        self.freeze_w2 = True

    def flush_for(self, name: str) -> Any:
        async def flush(batch: Batch) -> None:
            start, end = batch.first_offset, batch.last_offset + 1
            now = anyio.current_time()
            self.events.started.append((now, name, start, end))
            if start == 0:
                await self.straggler.wait()
            elif name == "w1" and self.kill_w1 and start >= 4 * JOB:
                self.kill_w1 = False
                self.events.faults.append((now, "kill", name, start, end))
                self.scopes[name].cancel()
                await anyio.sleep(1)  # cancelled here: nothing is flushed or reported
            elif name == "w2" and self.freeze_w2 and start >= 6 * JOB:
                self.freeze_w2 = False
                self.events.faults.append((now, "freeze", name, start, end))
                await anyio.sleep(1.5 * TIMEOUT_MS / 1000)
            await anyio.sleep(0.002 * len(batch))
            self.events.flushed.append((anyio.current_time(), name, start, end))

        return flush


async def run_schedule(
    kafka: Any, topic_factory: Any, unique_id: Any, plant: str | None = None
) -> Events:
    """Run the schedule (with ``plant``, if any) and return its events."""
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=1)
    settings = rangejobs_settings(
        bootstrap,
        unique_id("g"),
        topic,
        unique_id,
        range_jobs_max_records=JOB,
        range_jobs_max_in_flight=6,
        range_jobs_timeout_ms=TIMEOUT_MS,
    )
    tp = TopicPartition(topic, 0)
    await produce(bootstrap, topic, 0, RECORDS)
    events = Events()
    chaos = Chaos(events)
    async with owner(settings) as engine, anyio.create_task_group() as tg:

        async def commit(offsets: Any, metadata: str) -> object:
            events.commits.append((anyio.current_time(), offsets[tp], metadata))
            return await engine.commit(offsets, metadata)

        async def scheduler(name: str) -> tuple[RangeJobScheduler, anyio.CancelScope]:
            clients = await tg_enter(tg, range_job_clients(settings))
            # Offers and assignments name the scheduler (the same member runs both).
            made = scheduler_over(settings, clients, engine, commit=commit, member_id=name)
            took = await made.take(tp)
            events.takeovers.append((anyio.current_time(), name, *took._committed))
            scope = anyio.CancelScope()

            async def run() -> None:
                with scope:
                    await made.run()

            tg.start_soon(run)
            return made, scope

        for name in ("w1", "w2", "w3"):
            await start_worker(tg, settings, chaos, name)
        _first, first_scope = await scheduler("s1")

        def finished_beyond() -> bool:
            # The planted scheduler never writes metadata; it commits past the straggler.
            if plant == "commit_past_unfinished":
                return any(offset > JOB for _, offset, _ in events.commits)
            return any(m for _, _, m in events.commits)

        await wait_until(finished_beyond, 30, "a commit beyond the straggler")
        first_scope.cancel()  # killed: no final commit, its leases vanish
        events.faults.append((anyio.current_time(), "kill", "s1", 0, 0))
        if plant == "ignore_metadata":
            scheduler_module.decode_completed = lambda metadata, committed: DecodedRanges(
                completed_ranges.CompletedRanges(committed or 0)
            )
        _second, _ = await scheduler("s2")
        chaos.straggler.set()
        deadline = anyio.current_time() + 60
        while (await engine.committed_with_metadata([tp]))[tp] != (RECORDS, ""):
            if plant == "commit_past_unfinished" and anyio.current_time() > deadline - 45:
                break  # the plant may commit past the end of what is flushed
            assert anyio.current_time() < deadline, "the schedule did not finish"
            await anyio.sleep(0.2)
        tg.cancel_scope.cancel()
    return events


class TracingWorker(RangeJobWorker):
    """Records every job it is assigned, and by which scheduler."""

    def __init__(self, events: Events, name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._events = events
        self._name = name

    async def _work(self, key: bytes, job: JobMessage) -> None:
        now = anyio.current_time()
        self._events.assigned.append((now, self._name, job.scheduler, job.start, job.end))
        await super()._work(key, job)


async def start_worker(tg: Any, settings: CapgroupSettings, chaos: Chaos, name: str) -> None:
    clients = await tg_enter(tg, range_job_clients(settings))
    worker = TracingWorker(
        chaos.events,
        name,
        settings,
        jobs=clients.jobs,
        reader=clients.worker_reader,
        producer=clients.producer,
        flush=chaos.flush_for(name),
        worker_id=lambda: name,
    )
    scope = chaos.scopes[name] = anyio.CancelScope()

    async def run() -> None:
        with scope:
            await worker.run()

    tg.start_soon(run)


async def test_chaos_schedule_holds_every_invariant(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    events = await run_schedule(kafka, topic_factory, unique_id)
    found = verdicts(events, RECORDS)
    flushed = Counter(o for _, _, s, e in events.flushed for o in range(s, e))
    print(
        f"chaos: {RECORDS} records, {sum(flushed.values())} flushed, "
        f"{sum(1 for n in flushed.values() if n > 1)} duplicated, {len(events.commits)} commits "
        f"({sum(1 for c in events.commits if c[2])} with metadata), faults {events.faults}"
    )
    assert found == {key: [] for key in found}, found
    kinds = Counter(kind for _, kind, _, _, _ in events.faults)
    assert kinds == {"kill": 2, "freeze": 1}, "every fault happened"
    assert len(events.takeovers) == 2
    assert decode_completed(events.takeovers[1][3], events.takeovers[1][2]).ranges.ranges, (
        "the new owner took over finished jobs from the metadata"
    )


@pytest.mark.parametrize(
    ("plant", "invariant"),
    [
        ("commit_past_unfinished", "gap_free_commits"),
        ("ignore_metadata", "takeover_skips_finished"),
    ],
)
async def test_a_planted_bug_fails_its_invariant(
    kafka: Any,
    topic_factory: Any,
    unique_id: Any,
    monkeypatch: pytest.MonkeyPatch,
    plant: str,
    invariant: str,
) -> None:
    if plant == "commit_past_unfinished":

        def commit_due(self: PartitionScheduler) -> tuple[int, str] | None:
            wanted = (self.window.cursor, "")
            return None if wanted == self._committed else wanted

        monkeypatch.setattr(PartitionScheduler, "commit_due", commit_due)
    monkeypatch.setattr(scheduler_module, "decode_completed", decode_completed)
    events = await run_schedule(kafka, topic_factory, unique_id, plant)
    found = verdicts(events, RECORDS)
    print(f"{plant}: {invariant} failed with {len(found[invariant])}, e.g. {found[invariant][:2]}")
    assert found[invariant], f"{plant} went unnoticed: {found}"
