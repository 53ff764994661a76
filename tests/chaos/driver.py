"""The chaos driver: member processes with heterogeneous budgets, a producer, and a seeded,
reproducible schedule of faults, then the invariants over what everything logged.

One :class:`ChaosConfig` describes a run; :func:`run_chaos` executes it against a cluster
(started here from the local jars unless one is passed in) and returns the report. The
schedule is a pure function of the seed (:func:`make_schedule`); the targets of faults are
drawn from the same seeded generator as the run goes, so a seed replays the same faults on
the same members (timing on a shared machine still varies).

Fault kinds:

``sigkill``        SIGKILL a member, restart it (new incarnation) a moment later;
``zombie``         SIGSTOP a member for session timeout + 3 s, then SIGCONT;
``sigterm``        graceful SIGTERM (flush, commit, leave unless static), then restart;
``join``           a new member joins;
``lower_budget``   a static member restarts under the same ``group_instance_id`` with a lower
                   ``CAPGROUP_MAX_PARTITIONS`` and ``CAPGROUP_MEMORY_BUDGET_BYTES``;
``broker_restart`` the single broker is stopped and started again (``--nodes 1``);
``node_loss``      the node hosting the group coordinator is killed, restarted later
                   (``--nodes 3``).

Range-jobs runs (issue 14) aim the member faults from what the members audited (read back from
their audit logs): ``sigkill_scheduler`` / ``zombie_scheduler`` hit a member scheduling range
jobs, preferring one whose latest accepted commit carries finished jobs in its metadata (so the
next owner takes over from it); ``sigkill_worker`` / ``zombie_worker`` hit a member in the
middle of a job, preferring one that schedules nothing. Each waits (bounded) for such a member,
else falls back to any; the fault is logged as ``sigkill`` / ``zombie`` with its ``target``.
Their zombies run in the background (SIGCONT after session timeout + 3 s) while the schedule
goes on, so a scheduler can be killed while a worker's job is frozen.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Self

import anyio
import anyio.abc

from capgroup.devkafka.admin import admin_client, create_topic, find_group_coordinator
from capgroup.devkafka.cluster import LocalKafkaCluster
from capgroup.settings import RECORD_OVERHEAD_BYTES, fetch_reserve_bytes, load_settings
from tests.brokers import unique_name
from tests.chaos import invariants
from tests.chaos.invariants import Limits
from tests.chaos.logs import JsonLines, load_run
from tests.chaos.producer import ChaosProducer
from tests.chaos.report import build_report, summary
from tests.membership.harness import MemberProcess
from tests.processes import read_jsonl

#: Every fault kind; ``broker_restart`` needs one node, ``node_loss`` three.
FAULT_KINDS = (
    "sigkill",
    "zombie",
    "sigterm",
    "join",
    "lower_budget",
    "broker_restart",
    "node_loss",
    "sigkill_scheduler",
    "sigkill_worker",
    "zombie_scheduler",
    "zombie_worker",
)

#: Batch and fetch limits of every member.
BATCH_MAX_BYTES = 64 * 1024
BATCH_MAX_RECORDS = 500
FETCH_BYTES = 64 * 1024


def partition_cost(batch_max_records: int = BATCH_MAX_RECORDS) -> int:
    """Bytes one partition costs a member with those limits, by the runtime's own formula
    (``CapgroupSettings.partition_cost_bytes``, what the member advertises and the assignor
    charges), so a budget sized for N partitions buys exactly N whatever the formula is."""
    settings = load_settings(
        batch_max_bytes=BATCH_MAX_BYTES,
        batch_max_records=batch_max_records,
        max_partition_fetch_bytes=FETCH_BYTES,
    )
    return int(settings.partition_cost_bytes)


@dataclass(frozen=True)
class MemberSpec:
    """A member of the chaos group: its name, partition cap and whether it is static.

    ``relay_slots`` (relay runs): how many of its ``max_partitions`` slots its budget buys only
    as relay-only partitions (a fetch buffer each), not as batch partitions.
    """

    name: str
    max_partitions: int
    static: bool
    relay_slots: int = 0

    @property
    def budget(self) -> int:
        """Memory budget sized for exactly ``max_partitions`` partitions."""
        return self.budget_for(BATCH_MAX_RECORDS)

    def budget_for(self, batch_max_records: int) -> int:
        """Memory budget for ``max_partitions - relay_slots`` batch partitions of that batch
        size plus ``relay_slots`` relay-only partitions (a fetch reserve each)."""
        batch = self.max_partitions - self.relay_slots
        return batch * partition_cost(batch_max_records) + self.relay_slots * fetch_reserve_bytes(
            FETCH_BYTES
        )


#: The group at the start: two large members (6 partitions) and one small (2); capacity 14
#: for 12 partitions, so losing a large member really leaves capacity short.
INITIAL_MEMBERS = (
    MemberSpec("m1", 6, static=True),
    MemberSpec("m2", 6, static=False),
    MemberSpec("m3", 2, static=True),
)

#: The relay schedule's group: batch capacity 5 for 6 partitions, and ``m3``'s budget buys
#: one batch partition plus one fetch buffer, so the partition nobody can batch is given to it
#: relay-only (issue 13: a member that cannot afford to batch a partition may still relay it).
RELAY_MEMBERS = (
    MemberSpec("m1", 2, static=True),
    MemberSpec("m2", 2, static=False),
    MemberSpec("m3", 2, static=True, relay_slots=1),
)

#: The range-jobs schedule's group: 4 partitions for a capacity of 6 (a killed member's
#: partitions always find a home), two static members and one dynamic.
RANGE_JOBS_MEMBERS = (
    MemberSpec("m1", 2, static=True),
    MemberSpec("m2", 2, static=False),
    MemberSpec("m3", 2, static=True),
)


@dataclass
class ChaosConfig:
    """One chaos run."""

    seed: int
    duration_s: float
    run_dir: Path
    nodes: int = 1
    soak: bool = False
    member_kind: str = "service"  # "service" (BatchingConsumer) or "engine"
    partitions: int = 12
    rate: float = 150.0
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 500
    rebalance_timeout_ms: int = 15000
    batch_max_age_ms: int = 1000
    max_members: int = 5
    #: Planted fault for every member (``commit_before_flush`` / ``no_fencing``); tests only.
    plant: str = ""
    #: Explicit fault kinds in order (CI); ``None`` draws them from the seed.
    faults: list[str] | None = None
    #: Quiet seconds before the first fault and after each one.
    warmup_s: float = 12.0
    #: Longest wait for the sinks to catch up with the producer at the end.
    drain_s: float = 90.0
    #: The group at the start (``None``: :data:`INITIAL_MEMBERS`).
    members: tuple[MemberSpec, ...] | None = None
    batch_max_records: int = BATCH_MAX_RECORDS
    #: Producer skew: this share of the records use one of ``hot_keys`` keys.
    hot_keys: int = 2
    hot_share: float = 0.5
    #: Milliseconds ``flush`` takes per record (``CHAOS_FLUSH_MS_PER_RECORD``): a slow sink.
    flush_ms_per_record: float = 0.0
    #: Relay run (issue 13): ``CAPGROUP_RELAY_ENABLED`` with these thresholds.
    relay: bool = False
    relay_lag_records: int = 200
    relay_max_hops: int = 3
    lag_sample_interval_ms: int = 1000
    #: Range-jobs run (issue 14): ``CAPGROUP_RANGE_JOBS_*`` with these values.
    range_jobs: bool = False
    range_jobs_lag_records: int = 200
    range_jobs_max_records: int = 50
    range_jobs_max_bytes: int = 64 * 1024
    range_jobs_timeout_ms: int = 6000
    range_jobs_worker_slots: int = 2
    range_jobs_max_in_flight: int = 6
    #: Longest wait of an aimed fault (range-jobs runs) for a member in the wanted state.
    target_wait_s: float = 15.0

    @property
    def initial_members(self) -> tuple[MemberSpec, ...]:
        """The members started first."""
        return self.members if self.members is not None else INITIAL_MEMBERS

    def limits(self) -> Limits:
        """Bounds the invariants apply to this run."""
        return Limits(
            session_timeout_s=self.session_timeout_ms / 1000,
            batch_age_s=self.batch_max_age_ms / 1000,
            unassigned_grace_s=2 * self.rebalance_timeout_ms / 1000 + 5,
            relay_max_hops=self.relay_max_hops if self.relay else 0,
            range_jobs=self.range_jobs,
        )

    @property
    def job_slot_bytes(self) -> int:
        """Budget the member sets aside for its range-job slots (the runtime advertises its
        budget minus this), added to every member's budget so its partition cap holds."""
        if not self.range_jobs:
            return 0
        per_job = self.range_jobs_max_bytes + self.range_jobs_max_records * RECORD_OVERHEAD_BYTES
        return self.range_jobs_worker_slots * per_job


#: The relay schedule's faults (CI): kills and a zombie while the hot partition relays.
RELAY_FAULTS = ["sigkill", "zombie", "sigkill"]


def relay_config(run_dir: Path, **overrides: Any) -> ChaosConfig:
    """The relay schedule (issue 13): 6 partitions for a batch capacity of 5, so one partition
    is left to relay-only; one hot key carries 70 % of 100 records/s, i.e. 75/s on the hot
    partition against 25/s a partition can flush (40 ms per record), three times its owner's
    pace; relay on (lag threshold 200 records, 3 hops, lag sampled every second); small
    batches (50 records, 2 s of flushing) so revokes and shutdowns stay within their
    deadlines. ``overrides`` replace any field (seed, duration, faults, plant...)."""
    fields: dict[str, Any] = {
        "seed": 13,
        "duration_s": 30.0,
        "run_dir": run_dir,
        "faults": list(RELAY_FAULTS),
        "partitions": 6,
        "rate": 100.0,
        "members": RELAY_MEMBERS,
        "batch_max_records": 50,
        "hot_keys": 1,
        "hot_share": 0.7,
        "flush_ms_per_record": 40.0,
        "relay": True,
        "warmup_s": 6.0,
        "drain_s": 60.0,
    }
    return ChaosConfig(**(fields | overrides))


#: The range-jobs schedule's faults (CI): a worker frozen mid-job, then (during the freeze)
#: the scheduler killed while its commit records finished jobs, a worker killed mid-job, and
#: a scheduler frozen past its session.
RANGE_JOBS_FAULTS = ["zombie_worker", "sigkill_scheduler", "sigkill_worker", "zombie_scheduler"]


def range_jobs_config(run_dir: Path, **overrides: Any) -> ChaosConfig:
    """The range-jobs schedule (issue 14): 4 partitions, one hot key carrying 60 % of 100
    records/s (about 70/s on the hot partition) against 40/s a partition can flush (25 ms per
    record), so its backlog passes the range-jobs threshold (200 records, lag sampled every
    second) and its owner cuts it into jobs of 50 records (6 in flight, 2 job slots per member,
    job timeout 6 s: shorter than a zombie's 9 s freeze); batches of 50 records. Faults
    (:data:`RANGE_JOBS_FAULTS`) 4 s apart, aimed at schedulers and at workers mid-job.
    ``overrides`` replace any field (seed, duration, faults, plant...)."""
    fields: dict[str, Any] = {
        "seed": 14,
        "duration_s": 16.0,
        "run_dir": run_dir,
        "faults": list(RANGE_JOBS_FAULTS),
        "partitions": 4,
        "rate": 100.0,
        "members": RANGE_JOBS_MEMBERS,
        "batch_max_records": 50,
        "hot_keys": 1,
        "hot_share": 0.6,
        "flush_ms_per_record": 25.0,
        "range_jobs": True,
        "warmup_s": 6.0,
        "drain_s": 60.0,
    }
    return ChaosConfig(**(fields | overrides))


@dataclass
class ScheduledFault:
    """A fault kind and when (seconds after the warm-up) to inject it."""

    at_s: float
    kind: str


def make_schedule(config: ChaosConfig) -> list[ScheduledFault]:
    """The run's faults: a pure function of the config and its seed.

    CI (``faults`` given): those kinds, evenly spread over the duration. Soak: kinds drawn
    with weights, one every 12-25 s, until the duration is used up.
    """
    rng = random.Random(config.seed)
    if config.faults is not None:
        kinds = list(config.faults)
        step = config.duration_s / max(1, len(kinds))
        return [ScheduledFault(round(i * step, 1), k) for i, k in enumerate(kinds)]
    cluster_fault = "broker_restart" if config.nodes == 1 else "node_loss"
    weights = {
        "sigkill": 5,
        "zombie": 3,
        "sigterm": 3,
        "join": 2,
        "lower_budget": 2,
        cluster_fault: 1,
    }
    out: list[ScheduledFault] = []
    t = 0.0
    while t < config.duration_s:
        kind = rng.choices(list(weights), list(weights.values()))[0]
        out.append(ScheduledFault(round(t, 1), kind))
        t += rng.uniform(12.0, 25.0)
    return out


class ChaosMember(MemberProcess):
    """A chaos member process: the harness's :class:`MemberProcess`, running the chaos service
    (``capgroup run tests.chaos.service:ChaosService``) or the engine-only member."""

    def __init__(
        self, config: ChaosConfig, spec: MemberSpec, inc: int, settings: dict[str, Any]
    ) -> None:
        super().__init__(spec.name, config.run_dir / f"{spec.name}.{inc}.log", settings)
        self.spec = spec
        self.inc = inc
        self.kind = config.member_kind
        self._env |= {
            "CHAOS_DIR": str(config.run_dir),
            "CHAOS_MEMBER": spec.name,
            "CHAOS_INC": str(inc),
            "CHAOS_PLANT": config.plant,
            "CHAOS_FLUSH_MS_PER_RECORD": str(config.flush_ms_per_record),
        }
        self.budget = spec.budget_for(config.batch_max_records) + config.job_slot_bytes
        self.start_t = 0.0
        self.end_t: float | None = None

    def command(self) -> list[str]:
        """The chaos service under ``capgroup run``, or the engine-only member."""
        if self.kind == "engine":
            return [sys.executable, "-m", "tests.chaos.engine_member"]
        capgroup = str(Path(sys.executable).parent / "capgroup")
        return [capgroup, "run", "tests.chaos.service:ChaosService"]

    def start(self) -> Self:
        """Start the process (stderr to ``<member>.<inc>.stderr`` in the run directory)."""
        super().start()
        self.start_t = time.time()
        return self

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc is not None and self.proc.poll() is None

    def record(self) -> dict[str, Any]:
        """The incarnation row for ``incarnations.jsonl``."""
        return {
            "member": self.name,
            "inc": self.inc,
            "pid": self.proc.pid if self.proc else None,
            "start_t": self.start_t,
            "end_t": self.end_t,
            "max_partitions": self.spec.max_partitions,
            "budget": self.budget,
            "static": self.spec.static,
            "exit_code": self.proc.returncode if self.proc else None,
        }


class Driver:
    """Runs one chaos schedule against ``bootstrap`` (and ``cluster`` for broker faults)."""

    def __init__(
        self, config: ChaosConfig, bootstrap: str, cluster: LocalKafkaCluster | None
    ) -> None:
        self.config = config
        self.bootstrap = bootstrap
        self.cluster = cluster
        self.rng = random.Random(config.seed * 7919 + 1)
        self.group = unique_name("chaos", f"s{config.seed}")
        self.topic = unique_name("chaos", f"s{config.seed}")
        self.members: dict[str, ChaosMember] = {}
        self.history: list[ChaosMember] = []
        config.run_dir.mkdir(parents=True, exist_ok=True)
        self.faults = JsonLines(config.run_dir / "faults.jsonl")
        self._next_member = len(config.initial_members) + 1
        self.log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)
        #: Members SIGSTOPped now (background zombies of range-jobs runs).
        self._frozen: set[str] = set()
        self._background: anyio.abc.TaskGroup | None = None

    # ------------------------------------------------------------------ members -------
    def _settings(self, spec: MemberSpec) -> dict[str, Any]:
        c = self.config
        settings: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "group_id": self.group,
            "topics": [self.topic],
            "session_timeout_ms": c.session_timeout_ms,
            "heartbeat_interval_ms": c.heartbeat_interval_ms,
            "rebalance_timeout_ms": c.rebalance_timeout_ms,
            "revoke_safety_margin_ms": 3000,
            "shutdown_timeout_ms": 8000,
            "max_partitions": spec.max_partitions,
            "memory_budget_bytes": spec.budget_for(c.batch_max_records) + c.job_slot_bytes,
            "batch_max_records": c.batch_max_records,
            "batch_max_bytes": BATCH_MAX_BYTES,
            "batch_max_age_ms": c.batch_max_age_ms,
            "max_partition_fetch_bytes": FETCH_BYTES,
            "client_id": f"chaos-{spec.name}",
            "log_format": "json",
        }
        if spec.static:
            settings["group_instance_id"] = f"{self.group}-{spec.name}"
        if c.relay:
            settings |= {
                "relay_enabled": True,
                "relay_lag_records": c.relay_lag_records,
                "relay_max_hops": c.relay_max_hops,
                "lag_sample_interval_ms": c.lag_sample_interval_ms,
            }
        if c.range_jobs:
            settings |= {
                "range_jobs_enabled": True,
                "range_jobs_lag_records": c.range_jobs_lag_records,
                "range_jobs_max_records": c.range_jobs_max_records,
                "range_jobs_max_bytes": c.range_jobs_max_bytes,
                "range_jobs_timeout_ms": c.range_jobs_timeout_ms,
                "range_jobs_worker_slots": c.range_jobs_worker_slots,
                "range_jobs_max_in_flight": c.range_jobs_max_in_flight,
                "lag_sample_interval_ms": c.lag_sample_interval_ms,
            }
        return settings

    def _write_incarnations(self) -> None:
        rows = "".join(json.dumps(m.record()) + "\n" for m in self.history)
        (self.config.run_dir / "incarnations.jsonl").write_text(rows)

    def start_member(self, spec: MemberSpec) -> ChaosMember:
        """Start a (new incarnation of a) member."""
        inc = sum(1 for m in self.history if m.name == spec.name)
        member = ChaosMember(self.config, spec, inc, self._settings(spec)).start()
        self.members[spec.name] = member
        self.history.append(member)
        self._write_incarnations()
        return member

    async def _reap(self, member: ChaosMember, within: float) -> int | None:
        """Wait up to ``within`` s for ``member`` to exit; SIGKILL it after that."""
        assert member.proc is not None
        deadline = anyio.current_time() + within
        # Polling, not an Event: the exit of a child process is not an event anyio offers.
        while member.proc.poll() is None and anyio.current_time() < deadline:  # noqa: ASYNC110
            await anyio.sleep(0.1)
        if member.proc.poll() is None:
            member.close()
        member.end_t = time.time()
        self._write_incarnations()
        return member.proc.returncode

    def _fault(self, kind: str, t: float, **fields: Any) -> dict[str, Any]:
        row = {"kind": kind, "t": t, "t_end": time.time(), **fields}
        self.faults.write(row)
        self.log(f"[chaos] {time.strftime('%H:%M:%S')} {kind} {fields}")
        return row

    def _pick(self, candidates: list[ChaosMember]) -> ChaosMember:
        return self.rng.choice(sorted(candidates, key=lambda m: m.name))

    # ------------------------------------------------------------------ faults --------
    async def sigkill(self) -> dict[str, Any]:
        """SIGKILL a member, restart it after 1-3 s."""
        victim = self._pick(list(self.members.values()))
        t = time.time()
        victim.signal(signal.SIGKILL)
        await self._reap(victim, 10)
        await anyio.sleep(self.rng.uniform(1.0, 3.0))
        self.start_member(victim.spec)
        return self._fault("sigkill", t, member=victim.name, inc=victim.inc)

    async def zombie(self) -> dict[str, Any]:
        """SIGSTOP a member past its session, then SIGCONT it."""
        victim = self._pick(list(self.members.values()))
        t_stop = time.time()
        victim.signal(signal.SIGSTOP)
        try:
            await anyio.sleep(self.config.session_timeout_ms / 1000 + 3.0)
        finally:
            victim.signal(signal.SIGCONT)
        t_cont = time.time()
        return self._fault(
            "zombie", t_stop, member=victim.name, inc=victim.inc, t_stop=t_stop, t_cont=t_cont
        )

    async def sigterm(self) -> dict[str, Any]:
        """Graceful SIGTERM (the member flushes, commits and leaves), then a restart."""
        victim = self._pick(list(self.members.values()))
        t = time.time()
        victim.signal(signal.SIGTERM)
        code = await self._reap(victim, 20)
        await anyio.sleep(self.rng.uniform(1.0, 3.0))
        self.start_member(victim.spec)
        return self._fault("sigterm", t, member=victim.name, inc=victim.inc, exit_code=code)

    async def join(self) -> dict[str, Any]:
        """A new member (2 or 6 partitions) joins; at the member limit, one leaves instead."""
        t = time.time()
        dynamic = [m for m in self.members.values() if not m.spec.static]
        if len(self.members) >= self.config.max_members and dynamic:
            leaver = self._pick(dynamic)
            leaver.signal(signal.SIGTERM)
            code = await self._reap(leaver, 20)
            del self.members[leaver.name]
            return self._fault("leave", t, member=leaver.name, inc=leaver.inc, exit_code=code)
        spec = MemberSpec(f"m{self._next_member}", self.rng.choice((2, 6)), static=False)
        self._next_member += 1
        self.start_member(spec)
        return self._fault("join", t, member=spec.name, max_partitions=spec.max_partitions)

    async def lower_budget(self) -> dict[str, Any]:
        """A static member restarts under its instance id with half its partition cap (and
        budget); a member already at 1 partition is raised back to its original size."""
        candidates = [m for m in self.members.values() if m.spec.static]
        victim = self._pick(candidates)
        old = victim.spec
        original = next(s for s in self.config.initial_members if s.name == old.name).max_partitions
        lowered = old.max_partitions // 2 if old.max_partitions > 1 else original
        spec = MemberSpec(old.name, lowered, static=True)
        t = time.time()
        victim.signal(signal.SIGTERM)
        code = await self._reap(victim, 20)
        # Back within the session timeout, so the broker hands back the cached assignment.
        await anyio.sleep(0.5)
        self.start_member(spec)
        return self._fault(
            "lower_budget" if lowered < old.max_partitions else "raise_budget",
            t,
            member=old.name,
            inc=victim.inc,
            max_partitions=[old.max_partitions, lowered],
            exit_code=code,
        )

    async def broker_restart(self) -> dict[str, Any]:
        """Stop the single broker (SIGTERM) and start it again."""
        assert self.cluster is not None, "broker faults need a LocalKafkaCluster"
        t = time.time()
        node = self.cluster.nodes[0].node_id
        await anyio.to_thread.run_sync(self.cluster.stop_node, node)
        await anyio.sleep(self.rng.uniform(2.0, 5.0))
        self.cluster.start_node(node)
        await self.cluster.wait_ready(90)
        return self._fault("broker_restart", t, node=node)

    async def node_loss(self) -> dict[str, Any]:
        """Kill the node hosting the group coordinator; restart it 15 s later."""
        assert self.cluster is not None, "node faults need a LocalKafkaCluster"
        node = await find_group_coordinator(self.bootstrap, self.group)
        t = time.time()
        self.cluster.kill_node(node)
        await anyio.sleep(15)
        self.cluster.start_node(node)
        await self.cluster.wait_ready(90)
        return self._fault("node_loss", t, node=node, coordinator=True)

    # ------------------------------------------------------------------ range jobs ----
    def range_jobs_view(self) -> dict[str, dict[str, Any]]:
        """Per current member (its running incarnation): the partitions it schedules, the
        jobs it works now, and the partitions whose latest accepted commit it made carried
        metadata (finished jobs beyond the offset), from its audit log."""
        out: dict[str, dict[str, Any]] = {}
        for name, member in self.members.items():
            scheduling: set[int] = set()
            working: set[tuple[int, ...]] = set()
            metadata: dict[int, bool] = {}
            path = self.config.run_dir / f"audit-{name}.jsonl"
            for e in read_jsonl(path):
                if e.get("inc") != member.inc:
                    continue
                kind = e["kind"]
                if kind == "rj_take":
                    scheduling.add(e["p"])
                elif kind == "rj_drop":
                    scheduling.discard(e["p"])
                elif kind == "job_start":
                    working.add((e["p"], *e["job"]))
                elif kind == "job_end":
                    working.discard((e["p"], *e["job"]))
                elif kind == "commit" and e.get("ok"):
                    with_meta = {p for _, p, _ in e.get("metadata", [])}
                    for _, p, _ in e["offsets"]:
                        metadata[p] = p in with_meta
            out[name] = {
                "scheduling": scheduling,
                "working": working,
                "metadata": {p for p in scheduling if metadata.get(p)},
            }
        return out

    async def _target(self, role: str) -> tuple[ChaosMember, str]:
        """A live, unfrozen member in ``role`` (``scheduler``: scheduling range jobs, best
        with metadata in its latest commit; ``worker``: in the middle of a job, best one that
        schedules nothing); waits up to ``target_wait_s``, then takes the best there is."""
        deadline = anyio.current_time() + self.config.target_wait_s
        while True:
            view = self.range_jobs_view()
            live = {
                n: v for n, v in view.items() if n not in self._frozen and self.members[n].alive
            }
            if role == "scheduler":
                tiers = [
                    ("scheduler_with_metadata", [n for n, v in live.items() if v["metadata"]]),
                    ("scheduler", [n for n, v in live.items() if v["scheduling"]]),
                ]
            else:
                tiers = [
                    (
                        "worker_mid_job",
                        [n for n, v in live.items() if v["working"] and not v["scheduling"]],
                    ),
                    ("scheduler_mid_job", [n for n, v in live.items() if v["working"]]),
                ]
            late = anyio.current_time() >= deadline
            for label, names in tiers if late else tiers[:1]:
                if names:
                    return self.members[self.rng.choice(sorted(names))], label
            if late:
                others = [m for n, m in self.members.items() if n not in self._frozen]
                return self._pick(others), "random"
            self._check_alive()
            await anyio.sleep(0.1)

    async def _kill(self, victim: ChaosMember, **fields: Any) -> dict[str, Any]:
        t = time.time()
        victim.signal(signal.SIGKILL)
        await self._reap(victim, 10)
        await anyio.sleep(self.rng.uniform(1.0, 3.0))
        self.start_member(victim.spec)
        return self._fault("sigkill", t, member=victim.name, inc=victim.inc, **fields)

    async def _freeze(self, victim: ChaosMember, **fields: Any) -> dict[str, Any]:
        t_stop = time.time()
        victim.signal(signal.SIGSTOP)
        self._frozen.add(victim.name)
        try:
            await anyio.sleep(self.config.session_timeout_ms / 1000 + 3.0)
        finally:
            victim.signal(signal.SIGCONT)
            self._frozen.discard(victim.name)
        t_cont = time.time()
        return self._fault(
            "zombie",
            t_stop,
            member=victim.name,
            inc=victim.inc,
            t_stop=t_stop,
            t_cont=t_cont,
            **fields,
        )

    async def _aimed(self, kind: str, role: str) -> None:
        victim, chosen = await self._target(role)
        fields = {"target": role, "chosen": chosen}
        self.log(f"[chaos] {kind} aimed at {role}: {victim.name} ({chosen})")
        if kind == "sigkill":
            await self._kill(victim, **fields)
        elif self._background is not None:
            self._background.start_soon(partial(self._freeze, victim, **fields))
        else:
            await self._freeze(victim, **fields)

    async def sigkill_scheduler(self) -> None:
        """SIGKILL a member scheduling range jobs (best: its commit records finished jobs)."""
        await self._aimed("sigkill", "scheduler")

    async def sigkill_worker(self) -> None:
        """SIGKILL a member in the middle of a range job."""
        await self._aimed("sigkill", "worker")

    async def zombie_scheduler(self) -> None:
        """SIGSTOP (in the background) a member scheduling range jobs past its session."""
        await self._aimed("zombie", "scheduler")

    async def zombie_worker(self) -> None:
        """SIGSTOP (in the background) a member in the middle of a range job past its
        session and the job timeout."""
        await self._aimed("zombie", "worker")

    # ------------------------------------------------------------------ run -----------
    async def run(self) -> dict[str, Any]:
        """Start everything, inject the schedule, drain, stop, and judge."""
        c = self.config
        c.run_dir.mkdir(parents=True, exist_ok=True)
        schedule = make_schedule(c)
        replicas = 3 if c.nodes == 3 else 1
        await create_topic(
            self.bootstrap,
            self.topic,
            c.partitions,
            replicas,
            {"min.insync.replicas": "2"} if replicas == 3 else None,
        )
        meta = {
            "topic": self.topic,
            "group": self.group,
            "partitions": c.partitions,
            "limits": asdict(c.limits()),
            "config": {
                k: str(v) if isinstance(v, Path) else v
                for k, v in asdict(c).items()
                if k != "members"
            },
            "members": [asdict(m) for m in c.initial_members],
            "schedule": [asdict(s) for s in schedule],
        }
        (c.run_dir / "run.json").write_text(json.dumps(meta, indent=2))
        producer = ChaosProducer(
            self.bootstrap,
            self.topic,
            c.run_dir / "produced.jsonl",
            rate=c.rate,
            seed=c.seed,
            hot_keys=c.hot_keys,
            hot_share=c.hot_share,
        )
        started = time.time()
        try:
            async with anyio.create_task_group() as tg:
                self._background = tg
                tg.start_soon(producer.run)
                for spec in c.initial_members:
                    self.start_member(spec)
                # Faults start only once the whole group is in: on a loaded machine a member
                # process can take many seconds to import and join.
                await self._wait_joined(90)
                await anyio.sleep(c.warmup_s)
                t0 = anyio.current_time()
                for item in schedule:
                    await anyio.sleep(max(0.0, t0 + item.at_s - anyio.current_time()))
                    self._check_alive()
                    await getattr(self, item.kind)()
                await anyio.sleep(max(0.0, t0 + c.duration_s - anyio.current_time()))
                await anyio.sleep(c.warmup_s)
                producer.stop()
            await self._drain()
            await self._stop_all()
            await self._fetch_committed()
        finally:
            for member in self.history:
                member.close()
            self._write_incarnations()
            self.faults.close()
        data = load_run(c.run_dir)
        verdicts = invariants.check_all(data)
        return build_report(data, verdicts, meta, wall_s=time.time() - started)

    async def _wait_joined(self, within: float) -> None:
        """Wait (bounded) until every current member has audited a valid generation."""
        deadline = anyio.current_time() + within
        while anyio.current_time() < deadline:
            waiting = [
                m.name
                for m in self.members.values()
                if not any(
                    e.get("inc") == m.inc and e.get("gen", -1) >= 0
                    for e in read_jsonl(self.config.run_dir / f"audit-{m.name}.jsonl")
                )
            ]
            if not waiting:
                return
            self._check_alive()
            await anyio.sleep(0.5)
        self.log(f"[chaos] members {waiting} did not join within {within:.0f} s; going on")

    def _check_alive(self) -> None:
        """A member that died on its own (not by our hand) is a finding: log it and restart."""
        for name, member in list(self.members.items()):
            if not member.alive:
                member.end_t = member.end_t or time.time()
                self.log(f"[chaos] member {name} exited by itself: {member.stderr_tail()[-800:]}")
                self.faults.write(
                    {
                        "kind": "crash",
                        "t": member.end_t,
                        "t_end": time.time(),
                        "member": name,
                        "inc": member.inc,
                        "exit_code": member.proc.returncode if member.proc else None,
                    }
                )
                self.start_member(member.spec)

    async def _drain(self) -> None:
        """Wait (bounded) until every acknowledged record is in some sink (directly, or as a
        relayed copy naming it)."""
        deadline = anyio.current_time() + self.config.drain_s
        while anyio.current_time() < deadline:
            acked = {(a["p"], a["o"]) for a in read_jsonl(self.config.run_dir / "produced.jsonl")}
            data = load_run(self.config.run_dir)
            seen = {(p, o) for p, offs in invariants.processed_roots(data).items() for o in offs}
            if acked <= seen:
                return
            self._check_alive()
            await anyio.sleep(2)
        self.log("[chaos] drain timed out: some acknowledged records are in no sink")

    async def _stop_all(self) -> None:
        for member in self.members.values():
            if member.alive:
                member.signal(signal.SIGTERM)
        for member in self.members.values():
            await self._reap(member, 20)

    async def _fetch_committed(self) -> None:
        from aiokafka.structs import TopicPartition as KafkaTopicPartition

        wanted = [KafkaTopicPartition(self.topic, p) for p in range(self.config.partitions)]
        async with admin_client(self.bootstrap) as admin:
            raw = await admin.list_consumer_group_offsets(self.group, partitions=wanted)
        offsets = {
            str(tp.partition): (m.offset if m.offset >= 0 else None) for tp, m in raw.items()
        }
        (self.config.run_dir / "committed.json").write_text(
            json.dumps({"t": time.time(), "offsets": offsets})
        )


async def run_chaos(
    config: ChaosConfig, bootstrap: str | None = None, cluster: LocalKafkaCluster | None = None
) -> dict[str, Any]:
    """Run ``config``; start a local cluster of ``config.nodes`` nodes if none is given."""
    own: LocalKafkaCluster | None = None
    if bootstrap is None:
        own = cluster = LocalKafkaCluster(config.nodes)
        await anyio.to_thread.run_sync(own.start)
        bootstrap = own.bootstrap_servers
    try:
        return await Driver(config, bootstrap, cluster).run()
    finally:
        if own is not None:
            await anyio.to_thread.run_sync(own.close)


def write_report(report: dict[str, Any], path: Path) -> None:
    """Write the JSON report and print the human summary."""
    path.write_text(json.dumps(report, indent=2, default=str))
    print(summary(report))
