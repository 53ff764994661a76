"""The chaos test service: a :class:`~capgroup.BatchingConsumer` that records everything.

Run by the driver as ``capgroup run tests.chaos.service:ChaosService`` with ``CAPGROUP_*``
settings (each member its own ``max_partitions`` and ``memory_budget_bytes``) and the
``CHAOS_*`` variables of :mod:`tests.chaos.audit`.

- ``flush`` appends one sink row per record ``(topic, partition, offset, member, generation)``
  and fsyncs once per batch before returning, so the runtime commits only what is durable;
- the audit log gets every assignment step (full partition set, generation, buffered bytes,
  ``max_partitions``, budget), every revoke decision that discards a batch, every OffsetCommit
  that leaves the process with the broker's answer, and an RSS sample every second.

Planted faults (``CHAOS_PLANT``) show that each invariant catches what it is meant to; they
exist only here, in tests:

``overcommit``           advertises twice its ``max_partitions`` and budget (invariant 1);
``ignore_revoke``        keeps consuming partitions the group revoked (invariant 2);
``commit_before_flush``  each flush commits the batch's end offset first and writes the sink
                         ``PLANTED_FLUSH_DELAY_S`` later (invariants 3 and 4);
``drop_revoke_commits``  flushes revoked and shut-down partitions but silently skips their
                         final commit (invariant 5);
``slow_takeover``        sits 20 s in ``on_partitions_assigned`` for every gain except a first
                         start's, so taken-over partitions wait (invariant 6);
``no_fencing``           no local fencing: the engine ignores its own evidence of a lost
                         session (no heartbeat for a whole session, e.g. after SIGSTOP), and
                         commits go straight to the wire under the generation of the last
                         assignment, so a woken zombie commits under its stale generation
                         until the broker says no (invariant 7);
``relay_to_self``        (relay runs) the runtime's relay target choice
                         (``Relay.targets``, monkeypatched on the instance) returns partitions
                         the member owns (invariant 9);
``commit_before_ack``    (relay runs) before each relay produce, the member commits the relayed
                         records' offsets and produces ``PLANTED_FLUSH_DELAY_S`` later, so a
                         commit runs ahead of the acknowledgement (invariant 4, and 3 when a
                         kill falls in between);
``commit_past_unfinished`` (range-jobs runs) the scheduler commits its cursor, past jobs
                         offered but not done, without metadata (``PartitionScheduler.commit_due``
                         patched; invariant 4);
``ignore_metadata``      (range-jobs runs) a scheduler taking a partition over ignores the
                         finished jobs its commit metadata records (the scheduler module's
                         ``decode_completed`` patched; invariant 10).

Relay runs (``CAPGROUP_RELAY_ENABLED``): ``on_records_relayed`` audits every acknowledged
relay with the member's owned set at that moment and, for a copy relayed on, its own origin
header (read by wrapping ``capgroup.runtime.relay.hops_of``, which the relay calls for every
record it considers); sink rows of relayed copies carry their ``origin`` and ``hops`` headers.
``CHAOS_FLUSH_MS_PER_RECORD`` makes ``flush`` that slow per record, so a hot partition outruns
its owner.

Range-jobs runs (``CAPGROUP_RANGE_JOBS_ENABLED``, issue 14): job flushes go through the same
``flush``; their sink rows also carry ``job`` (``[start, end, attempt]``), ``assigned_t`` (when
the scheduler assigned the attempt: the assignment's deadline minus the job timeout) and
``sched`` (the assigning scheduler's member). The audit gets ``job_start`` / ``job_end`` around
each job a worker works, ``rj_take`` (a scheduler taking a partition over, with the committed
offset and metadata it starts from and how many finished ranges it knows) and ``rj_drop``;
commits carry their ``metadata`` (audit transport).
"""

from __future__ import annotations

import contextvars
import dataclasses
import os
import re
import threading
from collections.abc import Sequence
from typing import Any

import anyio

import capgroup.runtime.relay as relay_module
from capgroup import Batch, BatchingConsumer, RevokeAction
from capgroup.assignor.model import CapacityAdvertisement
from capgroup.membership.model import AssignmentChange, Generation
from capgroup.protocol.completed_ranges import CompletedRanges, DecodedRanges
from capgroup.runtime.rangejobs import scheduler as scheduler_module
from capgroup.runtime.rangejobs.scheduler import PartitionScheduler
from capgroup.runtime.relay import RELAY_HOPS_HEADER, RELAY_ORIGIN_HEADER, Relayed
from capgroup.types import TopicPartition
from tests.chaos.audit import PLANTED_FLUSH_DELAY_S, PLANTS, ChaosAudit

#: Local reasons for declaring the generation lost that ``no_fencing`` ignores.
_LOCAL_FENCING = ("no successful heartbeat", "without heartbeat")
#: How long ``slow_takeover`` sits in ``on_partitions_assigned``.
SLOW_TAKEOVER_S = 20.0
#: A chaos member's name inside a group member id.
_MEMBER_NAME = re.compile(r"-(m[0-9]+)(?:-|$)")
#: Range-jobs plants.
RANGE_JOBS_PLANTS = ("commit_past_unfinished", "ignore_metadata")
#: The range job the current task works (set around the worker's ``_work``), for sink rows.
_RANGE_JOB: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "chaos_range_job", default=None
)


def member_name(member_id: str) -> str:
    """The chaos member a group member id belongs to: the broker makes it from the client id
    (``chaos-<name>-<uuid>``) or, for a static member, from its instance id
    (``<group>-<name>-<uuid>``, the group ``chaos-s<seed>-<hex>``); anything else as is."""
    found = _MEMBER_NAME.search(member_id)
    return found.group(1) if found else member_id


def relay_headers(record: Any) -> dict[str, Any]:
    """``{"origin": [topic, p, o], "hops": n}`` of a relayed copy, else ``{}``."""
    out: dict[str, Any] = {}
    for name, value in record.headers or ():
        if value is None:
            continue
        if name == RELAY_ORIGIN_HEADER:
            topic, partition, offset = value.decode().rsplit("/", 2)
            out["origin"] = [topic, int(partition), int(offset)]
        elif name == RELAY_HOPS_HEADER:
            out["hops"] = int(value)
    return out if "origin" in out else {}


class ChaosService(BatchingConsumer):
    """The consumer every chaos member runs."""

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        self.audit = ChaosAudit.from_env()
        self.plant = os.environ.get("CHAOS_PLANT", "")
        if self.plant not in PLANTS:
            raise ValueError(f"unknown CHAOS_PLANT {self.plant!r}; known: {sorted(PLANTS)}")
        self._instrumented = False
        self._assigned_once = False
        self._revoking = False
        self._owned: frozenset[TopicPartition] = frozenset()
        self._last_generation: Generation | None = None
        #: Seconds ``flush`` takes per record (a slow sink: the relay schedule's hot partition).
        self.flush_delay_s = float(os.environ.get("CHAOS_FLUSH_MS_PER_RECORD", "0")) / 1000
        #: (partition, offset) -> origin header of copies the relay is about to relay on.
        self._upstream: dict[tuple[TopicPartition, int], list[Any] | None] = {}
        if self.settings.relay_enabled:
            self._watch_relay_hops()
        self.audit.start(
            max_partitions=self.settings.max_partitions,
            budget=self.budget_bytes,
            partition_cost=self.settings.partition_cost_bytes,
            advertised_max_partitions=self.max_partitions,
            instance_id=self.settings.group_instance_id,
            member_kind="service",
            plant=self.plant,
            relay=self.settings.relay_enabled,
            flush_ms_per_record=self.flush_delay_s * 1000,
        )
        # A thread, not a task: it samples even while the event loop is busy flushing.
        self._sampler = threading.Thread(target=self._sample_rss, daemon=True)
        self._sampler.start()

    def _buffered(self) -> int:
        try:
            return int(self.stats.buffered_bytes)
        except RuntimeError:  # a dict changed size under the sampler thread: try next time
            return 0

    def _sample_rss(self) -> None:
        stop = threading.Event()
        while not stop.wait(1.0):
            self.audit.rss(self._buffered(), len(self._owned), self.generation.generation_id)

    def _instrument(self) -> None:
        """Wrap the engine once it exists (the first assignment comes before any commit).

        Test probes reach into the engine's private parts on purpose: its coordinator
        transport (every commit leaves through it), its listener (the runtime's revoke step)
        and, for the planted faults, the checks a fault switches off.
        """
        engine = self.engine
        if self._instrumented or engine is None:
            return
        self._instrumented = True
        dropping = self.plant == "drop_revoke_commits"
        self.audit.wrap_transport(engine, drop=lambda: dropping and self._revoking)
        self._wrap_revoke(engine)
        if self.plant == "no_fencing":
            mark_lost = engine._mark_lost

            def lenient(reason: str) -> None:
                if not any(marker in reason for marker in _LOCAL_FENCING):
                    mark_lost(reason)

            async def stale_generation(deadline: float, refused: Any) -> Generation:
                # Straight to the wire under the generation of the last assignment: none of
                # the engine's checks (committable state, session expired locally).
                return self._last_generation or self.generation

            # Monkeypatching the instance is the point of a planted fault.
            engine._mark_lost = lenient  # type: ignore[method-assign]
            engine._committable_generation = stale_generation  # type: ignore[method-assign]
            engine._check_commit = lambda *args: None  # type: ignore[method-assign]
        if self.plant in ("relay_to_self", "commit_before_ack"):
            self._plant_relay(engine)

    def _watch_relay_hops(self) -> None:
        """Note the origin header of every copy the relay considers (it calls ``hops_of`` on
        each record it may relay), so ``on_records_relayed`` can say where a copy relayed on
        came from. A module-level wrap: this process runs one consumer."""
        hops_of = relay_module.hops_of

        def noting(record: Any) -> int:
            hops = hops_of(record)
            if hops:
                origin = relay_headers(record).get("origin")
                tp = TopicPartition(record.topic, record.partition)
                self._upstream[(tp, record.offset)] = origin
            return hops

        relay_module.hops_of = noting

    def _plant_relay(self, engine: Any) -> None:
        """The relay plants, on the runtime's :class:`~capgroup.runtime.relay.Relay` instance
        (private on purpose: a planted fault)."""
        relay = self._relay
        if relay is None:
            raise RuntimeError(f"CHAOS_PLANT={self.plant} needs CAPGROUP_RELAY_ENABLED")
        if self.plant == "relay_to_self":

            def own_targets(tp: TopicPartition) -> list[TopicPartition]:
                mine = sorted(engine.assignment - {tp}) or [tp]
                return [t for t in mine if t.topic == tp.topic] or [tp]

            relay.targets = own_targets  # type: ignore[method-assign]
            return
        sink = relay._sink
        send = sink.send

        async def commit_first(records: Sequence[Any]) -> None:
            ends: dict[TopicPartition, int] = {}
            for r in records:
                origin = dict(r.headers)[RELAY_ORIGIN_HEADER].decode().rsplit("/", 2)
                tp = TopicPartition(origin[0], int(origin[1]))
                ends[tp] = max(ends.get(tp, 0), int(origin[2]) + 1)
            await engine.commit(ends)
            await anyio.sleep(PLANTED_FLUSH_DELAY_S)
            await send(records)

        sink.send = commit_first  # type: ignore[method-assign]

    def _wrap_revoke(self, engine: Any) -> None:
        """Audit the runtime's revoke step (partitions are given up once it returns); with
        ``ignore_revoke`` planted, skip it: the member keeps consuming what it gave up."""
        listener = engine._listener
        revoke = listener.on_partitions_revoked

        async def audited(change: AssignmentChange) -> None:
            if self.plant == "ignore_revoke":
                return
            self._revoking = True
            try:
                await revoke(change)
            finally:
                self._revoking = False
            self._owned = self._owned - change.partitions
            self.audit.assignment(
                "revoke",
                change.generation.generation_id,
                self._owned,
                change.partitions,
                self._buffered(),
                self._relay_only() & self._owned,
            )

        listener.on_partitions_revoked = audited

    def _capacity(self) -> CapacityAdvertisement:
        advertised = super()._capacity()
        if self.plant != "overcommit":
            return advertised
        return dataclasses.replace(
            advertised,
            max_partitions=2 * advertised.max_partitions,
            memory_budget_bytes=2 * advertised.memory_budget_bytes,
        )

    # ------------------------------------------------------------------ range jobs ----
    async def on_start(self) -> None:
        """Range-jobs runs: instrument the scheduler and worker once the runtime built them
        (its ``attach``, wrapped on the instance: a test probe)."""
        await super().on_start()
        runtime = self._range_jobs
        if runtime is None:
            if self.plant in RANGE_JOBS_PLANTS:
                raise RuntimeError(f"CHAOS_PLANT={self.plant} needs CAPGROUP_RANGE_JOBS_ENABLED")
            return
        attach = runtime.attach

        def attached(**kwargs: Any) -> None:
            attach(**kwargs)
            self._instrument_range_jobs(runtime)

        runtime.attach = attached  # type: ignore[method-assign]

    def _instrument_range_jobs(self, runtime: Any) -> None:
        scheduler, worker = runtime.scheduler, runtime.worker
        take, drop, work = scheduler.take, scheduler.drop, worker._work
        timeout_s = self.settings.range_jobs_timeout_ms / 1000

        async def audited_take(tp: TopicPartition) -> Any:
            made = await take(tp)
            committed, metadata = made._committed
            self.audit.event(
                "rj_take",
                gen=self.generation.generation_id,
                topic=tp.topic,
                p=tp.partition,
                committed=committed,
                metadata=metadata,
                known=made.known_at_takeover,
            )
            return made

        def audited_drop(tp: TopicPartition) -> None:
            if tp in scheduler.partitions:
                self.audit.event("rj_drop", topic=tp.topic, p=tp.partition)
            drop(tp)

        async def traced_work(key: bytes, job: Any) -> None:
            info = {
                "job": [job.start, job.end, job.attempt],
                "assigned_t": job.deadline_ms / 1000 - timeout_s,
                "sched": member_name(job.scheduler),
            }
            self.audit.event("job_start", p=job.tp.partition, **info)
            token = _RANGE_JOB.set(info)
            try:
                await work(key, job)
            finally:
                _RANGE_JOB.reset(token)
                self.audit.event("job_end", p=job.tp.partition, job=info["job"])

        scheduler.take = audited_take
        scheduler.drop = audited_drop
        worker._work = traced_work
        # Planted faults: monkeypatching this process's range-jobs code is the point.
        if self.plant == "commit_past_unfinished":

            def commit_cursor(sched: PartitionScheduler) -> tuple[int, str] | None:
                wanted = (sched.window.cursor, "")
                return None if wanted == sched._committed else wanted

            PartitionScheduler.commit_due = commit_cursor  # type: ignore[method-assign]
        elif self.plant == "ignore_metadata":

            def nothing_known(metadata: str | None, committed: int | None) -> DecodedRanges:
                return DecodedRanges(CompletedRanges(max(committed or 0, 0)))

            scheduler_module.decode_completed = nothing_known

    # ------------------------------------------------------------------ hooks ---------
    async def flush(self, batch: Batch) -> None:
        """Write one sink row per record and fsync; with ``commit_before_flush`` planted,
        commit first."""
        generation = self.generation.generation_id
        if self.plant == "commit_before_flush" and self.engine is not None:
            await self.engine.commit({batch.tp: batch.last_offset + 1})
            await anyio.sleep(PLANTED_FLUSH_DELAY_S)
        if self.flush_delay_s:
            await anyio.sleep(self.flush_delay_s * len(batch.records))
        copies: dict[int, dict[str, Any]] = {}
        for r in batch.records:
            if found := relay_headers(r):
                copies[r.offset] = found
                self._upstream.pop((batch.tp, r.offset), None)
        self.audit.flushed(
            batch.tp, (r.offset for r in batch.records), generation, copies, _RANGE_JOB.get()
        )

    async def on_records_relayed(self, relayed: Sequence[Relayed]) -> None:
        """Audit acknowledged relays (before their commit) with what the member owns now."""
        rows = [
            [
                r.origin.topic,
                r.origin.partition,
                r.offset,
                r.destination.topic,
                r.destination.partition,
                r.hops,
                self._upstream.pop((r.origin, r.offset), None),
            ]
            for r in relayed
        ]
        self.audit.relayed(rows, self.generation.generation_id, self.assignment)

    def _relay_only(self) -> frozenset[TopicPartition]:
        engine = self.engine
        return frozenset(getattr(engine, "relay_only", ())) if engine is not None else frozenset()

    async def revoke_action(self, batch: Batch, deadline: float) -> RevokeAction:
        """The runtime's default decision, audited when it drops the batch."""
        action = await super().revoke_action(batch, deadline)
        if action is RevokeAction.DISCARD:
            self.audit.discarded(batch.tp, batch.first_offset, batch.last_offset, "revoke")
        return action

    async def on_partitions_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        """Record the full assignment after a gain (the engine sets it before calling us)."""
        self._instrument()
        self._owned = self.assignment
        self._last_generation = self.generation
        self.audit.assignment(
            "assign",
            self.generation.generation_id,
            self._owned,
            partitions,
            self._buffered(),
            self._relay_only() & self._owned,
        )
        # Every gain but a first start's: a restarted incarnation's first assignment is a
        # takeover too (the partitions of the process it replaces).
        if self.plant == "slow_takeover" and (self._assigned_once or self.audit.inc > 0):
            await anyio.sleep(SLOW_TAKEOVER_S)
        self._assigned_once = True

    async def on_partitions_lost(self, partitions: frozenset[TopicPartition]) -> None:
        """Record the loss (buffers already discarded, nothing committed)."""
        self._owned = self._owned - partitions
        self.audit.assignment("lost", -1, self._owned, partitions, self._buffered())

    async def _shutdown(self) -> None:
        # Graceful shutdown flushed and committed everything; from here the member takes no
        # records and is about to leave (the group may hand its partitions on at once).
        self._revoking = True
        try:
            await super()._shutdown()
        finally:
            self._revoking = False
        released, self._owned = self._owned, frozenset()
        self.audit.assignment(
            "stop", self.generation.generation_id, self._owned, released, self._buffered()
        )
