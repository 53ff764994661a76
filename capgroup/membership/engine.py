"""The membership engine: capgroup runs the classic group protocol itself.

aiokafka's own coordinator is eager (every rebalance revokes everything) and cannot commit
under our generation, so this engine drives FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
LeaveGroup and OffsetCommit/OffsetFetch through a :class:`CoordinatorTransport` (in production
aiokafka's client, see :mod:`capgroup.membership.transport`).

The manage loop reads like the protocol: join, sync, apply the assignment (revoke, then
assign), then wait while heartbeats run in their own task until something asks for a rejoin.
Listener callbacks run only from the manage loop, so they never overlap. Commits wait while a
join or sync is in flight, because a generation that is being replaced cannot commit.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import anyio
from aiokafka import errors as Errors  # noqa: N812 (aiokafka's own idiom)
from anyio.abc import TaskStatus

from capgroup.assignor.adapter import plan_group
from capgroup.assignor.model import PartitionTable
from capgroup.errors import (
    CommitFailedError,
    CommitFencedError,
    FencedInstanceError,
    GroupFatalError,
)
from capgroup.log import bind_member, get_logger
from capgroup.membership import wire
from capgroup.membership.model import (
    COMMITTABLE_STATES,
    NO_GENERATION,
    PROTOCOL_NAME,
    PROTOCOL_TYPE,
    AssignmentChange,
    AssignmentListener,
    CapacitySource,
    Generation,
    MembershipSnapshot,
    MemberState,
    RateSource,
)
from capgroup.membership.transport import (
    CONNECTION_ERRORS,
    AiokafkaTransport,
    CoordinatorTransport,
)
from capgroup.protocol._wire import MetadataDecodeError
from capgroup.protocol.capacity import encode_advertisement
from capgroup.protocol.consumer import (
    AssignmentInfo,
    SubscriptionCache,
    decode_assignment_info,
    decode_member_metadata,
    encode_member_metadata,
)
from capgroup.settings import CapgroupSettings
from capgroup.types import CapacityAdvertisement, OwnedPartition, TopicPartition

__all__ = [
    "FENCED_INSTANCE_ID",
    "GROUP_MAX_SIZE_REACHED",
    "MEMBER_ID_REQUIRED",
    "NONE",
    "REBALANCE_IN_PROGRESS",
    "UNKNOWN_MEMBER_ID",
    "MembershipEngine",
]

_log = get_logger("membership")

# Kafka error codes the engine reacts to, from aiokafka's error classes.
NONE: int = Errors.NoError.errno
UNKNOWN_MEMBER_ID: int = Errors.UnknownMemberIdError.errno
REBALANCE_IN_PROGRESS: int = Errors.RebalanceInProgressError.errno
MEMBER_ID_REQUIRED: int = Errors.MemberIdRequired.errno
# aiokafka 0.14 has no class for these two (Errors.for_code answers UnknownError), so the
# codes are spelled out here.
GROUP_MAX_SIZE_REACHED = 81
FENCED_INSTANCE_ID = 82

_COORDINATOR_MOVED = frozenset(
    {Errors.GroupCoordinatorNotAvailableError.errno, Errors.NotCoordinatorForGroupError.errno}
)
#: Answers after which the same request may succeed at the (possibly re-found) coordinator.
_COORDINATOR_BUSY = _COORDINATOR_MOVED | {
    Errors.GroupLoadInProgressError.errno,
    Errors.RequestTimedOutError.errno,
}
_GENERATION_GONE = frozenset({Errors.IllegalGenerationError.errno, UNKNOWN_MEMBER_ID})
_FATAL_JOIN = {
    Errors.InconsistentGroupProtocolError.errno: "another member of the group uses a different "
    "protocol (all members must run the capgroup assignor)",
    Errors.InvalidGroupIdError.errno: "the group id is invalid (CAPGROUP_GROUP_ID)",
    Errors.InvalidSessionTimeoutError.errno: "the broker refuses the session timeout "
    "(CAPGROUP_SESSION_TIMEOUT_MS is outside group.min/max.session.timeout.ms)",
    Errors.GroupAuthorizationFailedError.errno: "not authorized to join the group",
    GROUP_MAX_SIZE_REACHED: "the group is at group.max.size",
}
_LEAVE_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, NotImplementedError)


class _RetryableError(Exception):
    """An attempt failed in a way the next attempt (after backoff) may fix."""

    def __init__(self, reason: str, *, immediate: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.immediate = immediate


class MembershipEngine:
    """Runs one member of a capgroup consumer group.

    Use :meth:`run` inside a task group (``await tg.start(engine.run)`` returns once the first
    assignment is applied), :meth:`commit` to commit flushed offsets under the current
    generation, :meth:`request_rejoin` when the member's capacity changes, and :meth:`stop`.
    """

    def __init__(
        self,
        settings: CapgroupSettings,
        listener: AssignmentListener,
        capacity: CapacitySource,
        rates: RateSource | None = None,
        *,
        transport: CoordinatorTransport | None = None,
    ) -> None:
        """``transport`` reaches the coordinator; by default aiokafka's client
        (:class:`AiokafkaTransport`), a scripted peer in tests."""
        if not settings.group_id:
            raise GroupFatalError("CAPGROUP_GROUP_ID (group_id) must be set to join a group")
        if not settings.topics:
            raise GroupFatalError("CAPGROUP_TOPICS (topics) must name at least one topic")
        self._settings = settings
        self._listener = listener
        self._capacity = capacity
        self._rates = rates or dict
        self._group = settings.group_id
        self._instance_id = settings.group_instance_id
        self._topics = tuple(sorted(set(settings.topics)))

        self._transport: CoordinatorTransport = transport or AiokafkaTransport(settings)
        self._connected = False
        self._coordinator_id: int | None = None
        self._member_id = ""
        self._generation = NO_GENERATION
        self._leader_id = ""
        self._state = MemberState.UNJOINED
        self._state_changed = anyio.Event()
        self._rejoin = anyio.Event()
        self._rejoin_reasons: list[str] = []
        self._lost_reason: str | None = None
        self._owned: frozenset[TopicPartition] = frozenset()
        # During a revoke the partitions being given up may still be committed.
        self._committable: frozenset[TopicPartition] = frozenset()
        self._owned_generation: dict[TopicPartition, int] = {}
        self._advertised: CapacityAdvertisement | None = None
        self._last_heartbeat_ok = 0.0
        self._stopping = False
        self._leave_on_stop = settings.effective_leave_group_on_shutdown
        self._stop_event = anyio.Event()
        self._rebalances = 0
        self._last_rebalance_seconds: float | None = None
        self._known_partitions: dict[str, frozenset[int]] = {}
        self._fatal: GroupFatalError | None = None
        # A fresh number each time a partition is gained: a commit that waited across a lost
        # generation must not commit the old ownership's offset under the new one.
        self._gains = itertools.count()
        self._gained_at: dict[TopicPartition, int] = {}
        # What the leader said with the latest applied assignment, and, while this member
        # leads, the partitions its latest plan left unassigned.
        self._group_figures: AssignmentInfo | None = None
        self._unassigned: tuple[TopicPartition, ...] = ()
        # The relay-only part of ``_owned`` (issue 13): owned, fetched, never batched.
        self._relay_only: frozenset[TopicPartition] = frozenset()
        # When the current generation was applied (the pending-moves watch measures from it).
        self._applied_at = 0.0

    # ------------------------------------------------------------------ observation --
    @property
    def state(self) -> MemberState:
        """Where the member is in the group protocol."""
        return self._state

    @property
    def generation(self) -> Generation:
        """The current generation (``NO_GENERATION`` when not in one)."""
        return self._generation

    @property
    def assignment(self) -> frozenset[TopicPartition]:
        """Partitions this member owns now."""
        return self._owned

    @property
    def advertised(self) -> CapacityAdvertisement | None:
        """The capacity advertisement sent with the latest JoinGroup."""
        return self._advertised

    @property
    def group_figures(self) -> AssignmentInfo | None:
        """The group-wide figures the leader sent with the assignment of the current
        generation (unassigned and pending counts, capacity, demand, headroom, replicas
        wanted); None when not in a generation. Every member has them, not only the leader;
        the figures themselves are None when the leader runs a version that sends none."""
        return self._group_figures if self._generation.valid else None

    @property
    def unassigned_partitions(self) -> tuple[TopicPartition, ...]:
        """On the leader, the partitions its plan for the current generation left unassigned
        (sorted); empty on other members and when not in a generation."""
        return self._unassigned if self._generation.valid else ()

    @property
    def relay_only(self) -> frozenset[TopicPartition]:
        """The relay-only partitions of the current assignment (a subset of
        :attr:`assignment`: owned and committed as usual, but their records are republished,
        never batched); empty when not in a generation or when the leader sent none."""
        return self._relay_only if self._generation.valid else frozenset()

    def snapshot(self) -> MembershipSnapshot:
        """A consistent view of the member for logs, metrics and health checks."""
        return MembershipSnapshot(
            group_id=self._group,
            member_id=self._member_id,
            instance_id=self._instance_id,
            state=self._state,
            generation_id=self._generation.generation_id,
            is_leader=bool(self._member_id) and self._leader_id == self._member_id,
            assigned=self._owned,
            advertised=self._advertised,
            rebalances=self._rebalances,
            last_rebalance_seconds=self._last_rebalance_seconds,
            group_figures=self.group_figures,
            relay_only=self.relay_only,
        )

    # ------------------------------------------------------------------ control ------
    def request_rejoin(self, reason: str) -> None:
        """Ask for a rebalance, e.g. because the advertised capacity changed."""
        self._rejoin_reasons.append(reason)
        self._rejoin.set()

    def stop(self, *, leave_group: bool | None = None) -> None:
        """Ask :meth:`run` to finish: it leaves the group if ``leave_group`` (default: the
        ``leave_group_on_shutdown`` setting), closes the client and returns."""
        if leave_group is not None:
            self._leave_on_stop = leave_group
        self._stopping = True
        self._stop_event.set()
        self._rejoin.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Join the group and follow it until :meth:`stop`.

        Signals ``task_status`` once the first assignment is applied. Raises
        :class:`GroupFatalError` (e.g. :class:`FencedInstanceError`) when the member cannot
        continue.
        """
        bind_member(group_id=self._group)
        self._connected = True
        try:
            await self._transport.start(self._topics)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._heartbeat_loop)
                tg.start_soon(self._metadata_watch_loop)
                tg.start_soon(self._capacity_watch_loop)
                try:
                    await self._manage(task_status)
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._shutdown()

    # ------------------------------------------------------------------ manage loop --
    async def _manage(self, task_status: TaskStatus[None]) -> None:
        started = False
        failures = 0
        while not self._stopping:
            if self._lost_reason is not None:
                await self._lose_all(self._lost_reason)
            self._rejoin = anyio.Event()
            reasons, self._rejoin_reasons = self._rejoin_reasons, []
            began = anyio.current_time()
            try:
                await self._join_and_sync(reasons)
            except _RetryableError as retry:
                failures = 0 if retry.immediate else failures + 1
                _log.warning(
                    "rebalance_attempt_failed",
                    reason=retry.reason,
                    consecutive_failures=failures,
                    generation=self._generation.generation_id,
                )
                if failures:
                    await self._backoff(failures)
                self._rejoin_reasons.extend(reasons)
                continue
            failures = 0
            self._rebalances += 1
            self._last_rebalance_seconds = anyio.current_time() - began
            if not started:
                started = True
                task_status.started()
            await self._rejoin.wait()

    async def _backoff(self, failures: int) -> None:
        delay = min(0.1 * 2 ** min(failures, 10), 5.0) * random.uniform(0.8, 1.2)
        with anyio.move_on_after(delay):
            await self._stop_event.wait()

    def _set_state(self, state: MemberState) -> None:
        self._state = state
        changed, self._state_changed = self._state_changed, anyio.Event()
        changed.set()

    def _current_advertisement(self) -> CapacityAdvertisement:
        base = self._capacity()
        rates = self._rates()
        gen = self._generation.generation_id
        owned = tuple(
            OwnedPartition(
                tp.topic, tp.partition, self._owned_generation.get(tp, gen), rates.get(tp, 0.0)
            )
            for tp in sorted(self._owned)
        )
        advertised = CapacityAdvertisement(
            max_partitions=base.max_partitions,
            memory_budget_bytes=base.memory_budget_bytes,
            partition_bytes=base.partition_bytes,
            default_partition_bytes=base.default_partition_bytes,
            weight=base.weight,
            rack=base.rack,
            draining=base.draining or self._stopping,
            owned=owned,
            relay_partition_bytes=base.relay_partition_bytes,
        )
        self._advertised = advertised
        return advertised

    def _member_metadata(self) -> bytes:
        """JoinGroup protocol metadata: our subscription and capacity advertisement."""
        return encode_member_metadata(
            self._topics, encode_advertisement(self._current_advertisement())
        )

    async def _join_group(self, metadata: bytes) -> Any:
        """One JoinGroup request with our current member id; the coordinator's response."""
        return await self._coordinated(
            wire.JoinGroupRequest(
                self._group,
                self._settings.session_timeout_ms,
                self._settings.rebalance_timeout_ms,
                self._member_id,
                self._instance_id,
                PROTOCOL_TYPE,
                [(PROTOCOL_NAME, metadata)],
            ),
            coordination=True,
        )

    async def _join_and_sync(self, reasons: list[str]) -> None:
        self._set_state(MemberState.JOINING)
        metadata = self._member_metadata()
        _log.info(
            "group_join_started",
            reasons=reasons or ["initial"],
            owned=len(self._owned),
            generation=self._generation.generation_id,
        )
        join = await self._join_group(metadata)
        if join.error_code == MEMBER_ID_REQUIRED and not self._member_id:
            # KIP-394: a new dynamic member's first JoinGroup only obtains its member id and
            # the join proper is the next one. A step of every start, not a failed attempt.
            self._member_id = join.member_id
            bind_member(member_id=self._member_id)
            _log.info("member_id_assigned")
            join = await self._join_group(metadata)
        error = join.error_code
        if error == MEMBER_ID_REQUIRED:
            self._member_id = join.member_id
            bind_member(member_id=self._member_id)
            raise _RetryableError("member id assigned by the coordinator", immediate=True)
        if error == UNKNOWN_MEMBER_ID:
            self._forget_member("join: unknown member id")
            raise _RetryableError("unknown member id", immediate=True)
        if error == REBALANCE_IN_PROGRESS:
            raise _RetryableError("rebalance in progress", immediate=True)
        self._raise_for_fatal(error)
        self._raise_for_coordinator(error, "join")

        generation = Generation(join.generation_id, join.member_id)
        self._member_id = join.member_id
        self._leader_id = join.leader_id
        bind_member(member_id=self._member_id)
        assignments: list[tuple[str, bytes]] = []
        unassigned: tuple[TopicPartition, ...] = ()
        if join.leader_id == join.member_id:
            assignments, unassigned = await self._lead(join.members, generation.generation_id)

        self._set_state(MemberState.SYNCING)
        sync = await self._coordinated(
            wire.SyncGroupRequest(
                self._group,
                generation.generation_id,
                generation.member_id,
                self._instance_id,
                assignments,
            ),
            coordination=True,
        )
        error = sync.error_code
        if error == REBALANCE_IN_PROGRESS:
            raise _RetryableError("rebalance in progress during sync", immediate=True)
        if error in _GENERATION_GONE:
            self._mark_lost(f"sync: error {error}")
            if error == UNKNOWN_MEMBER_ID:
                self._forget_member("sync: unknown member id")
            raise _RetryableError(f"sync refused with error {error}", immediate=True)
        self._raise_for_fatal(error)
        self._raise_for_coordinator(error, "sync")
        assigned, self._group_figures = _decode_assignment(sync.member_assignment)
        self._unassigned = unassigned
        relay = self._group_figures.relay_only if self._group_figures is not None else ()
        await self._apply(generation, assigned, assigned.intersection(relay))

    async def _lead(
        self, members: list[Any], generation_id: int
    ) -> tuple[list[tuple[str, bytes]], tuple[TopicPartition, ...]]:
        """Run the capgroup assignor as the group leader; every member gets an entry. Also
        returns the partitions the plan leaves unassigned."""
        entries = [(m[0], m[1], m[2]) for m in members]
        topics: set[str] = set()
        cache = SubscriptionCache()  # members of one deployment send the same topic list
        for _, _, raw in entries:
            topics.update(_subscription(raw, cache))
        partitions = await self._partitions_of(sorted(topics))
        group_plan = plan_group(
            entries,
            partitions,
            generation_id,
            headroom_members=self._settings.autoscale_headroom_members,
        )
        _log.info(
            "group_plan_computed",
            generation=generation_id,
            members=len(entries),
            partitions=len(partitions),
            pending=len(group_plan.plan.pending),
            unassigned=len(group_plan.plan.unassigned),
            moved=group_plan.plan.moved,
        )
        unassigned = tuple(sorted(group_plan.plan.unassigned))
        return list(group_plan.assignments.items()), unassigned

    async def _partitions_of(self, topics: list[str]) -> PartitionTable:
        known = await self._transport.partitions(topics)
        # Columns, not an object per partition: the assignor reads them as they are.
        return PartitionTable.of_numbers({topic: known.get(topic, ()) for topic in topics})

    async def _apply(
        self,
        generation: Generation,
        assigned: frozenset[TopicPartition],
        relay: frozenset[TopicPartition] = frozenset(),
    ) -> None:
        began = anyio.current_time()
        previous = self._owned
        offered = len(assigned)
        if self._advertised is not None and _exceeds(assigned, self._advertised, relay):
            # A static member restarting with a lower budget is answered from the broker's
            # cache, without the leader seeing the new budget. Take only what fits (what we
            # already hold first), never start the rest, and ask for a real rebalance: our
            # next join claims only what we took, so the leader places the rest elsewhere.
            assigned = _within(assigned, previous, self._advertised, relay)
            _log.warning(
                "assignment_exceeds_capacity",
                generation=generation.generation_id,
                offered=offered,
                taken=len(assigned),
                max_partitions=self._advertised.max_partitions,
            )
            self.request_rejoin("assignment exceeds the advertised capacity")
        relay = relay & assigned
        revoked = previous - assigned
        added = assigned - previous
        self._generation = generation
        self._committable = previous | assigned
        self._last_heartbeat_ok = self._applied_at = anyio.current_time()
        self._set_state(MemberState.ASSIGNING)
        if revoked:
            # Two-phase hand-off: what we give up is flushed or discarded and committed
            # under this generation before anybody else may get it (in the next round).
            await self._listener.on_partitions_revoked(
                AssignmentChange(
                    generation, assigned, revoked, "revoked by the group leader", relay
                )
            )
        self._owned = previous & assigned
        self._relay_only = relay & self._owned
        if self._lost_reason is not None:
            # The generation died while the revoke hook ran: what we kept is lost too, and
            # nothing new is announced for a generation that no longer exists.
            return
        self._owned = assigned
        self._relay_only = relay
        self._committable = assigned
        self._owned_generation = dict.fromkeys(assigned, generation.generation_id)
        for tp in added:
            self._gained_at[tp] = next(self._gains)
        if added:
            try:
                await self._listener.on_partitions_assigned(
                    AssignmentChange(
                        generation, assigned, added, "assigned by the group leader", relay
                    )
                )
            except (CommitFailedError, CommitFencedError) as exc:
                # Gained partitions whose committed offsets cannot be read cannot be started
                # safely: give everything up and rejoin rather than guess a position.
                self._mark_lost(f"assigned partitions could not start: {exc}")
                return
        self._set_state(MemberState.STABLE)
        _log.info(
            "assignment_applied",
            generation=generation.generation_id,
            leader=self._leader_id == generation.member_id,
            assigned=_names(assigned),
            added=_names(added),
            revoked=_names(revoked),
            **({"relay_only": _names(relay)} if relay else {}),
            duration_s=round(anyio.current_time() - began, 3),
        )
        if revoked:
            self.request_rejoin("revoked partitions must be released to their new owners")

    def _mark_lost(self, reason: str) -> None:
        """The generation is gone: no commit may use it from now on. Listener callbacks run
        later, from the manage loop, so they never overlap with other callbacks."""
        if self._lost_reason is None:
            self._lost_reason = reason
        self._generation = NO_GENERATION
        self._committable = frozenset()
        self._set_state(MemberState.UNJOINED)
        self._rejoin.set()

    def _forget_member(self, reason: str) -> None:
        _log.info("member_id_reset", reason=reason, static=self._instance_id is not None)
        self._member_id = ""

    async def _lose_all(self, reason: str) -> None:
        self._lost_reason = None
        lost = self._owned
        self._owned = frozenset()
        self._relay_only = frozenset()
        self._owned_generation = {}
        self._gained_at.clear()
        _log.warning("generation_lost", reason=reason, lost=_names(lost))
        if lost:
            await self._listener.on_partitions_lost(
                AssignmentChange(NO_GENERATION, frozenset(), lost, reason)
            )

    # ------------------------------------------------------------------ heartbeats ----
    async def _heartbeat_loop(self) -> None:
        interval = self._settings.heartbeat_interval_ms / 1000
        session = self._settings.session_timeout_ms / 1000
        while True:
            await anyio.sleep(interval)
            if self._state not in COMMITTABLE_STATES:
                continue
            if anyio.current_time() - self._last_heartbeat_ok > session:
                # We were frozen (SIGSTOP, GC) or cut off for a whole session: the broker
                # has removed us, so nothing may be committed under this generation.
                self._mark_lost("no successful heartbeat within the session timeout")
                continue
            generation = self._generation
            try:
                with anyio.fail_after(max(interval * 2, 1.0)):
                    response = await self._coordinated(
                        wire.Heartbeat(
                            self._group,
                            generation.generation_id,
                            generation.member_id,
                            self._instance_id,
                        ),
                        coordination=False,
                    )
            except (_RetryableError, TimeoutError) as exc:
                _log.debug("heartbeat_failed", reason=str(exc))
                continue
            if generation != self._generation:
                continue
            error = response.error_code
            if error == NONE:
                self._last_heartbeat_ok = anyio.current_time()
            elif error == REBALANCE_IN_PROGRESS:
                self._last_heartbeat_ok = anyio.current_time()
                if not self._rejoin.is_set():
                    self.request_rejoin("the coordinator started a rebalance")
            elif error in _GENERATION_GONE:
                self._mark_lost(f"heartbeat: error {error}")
                if error == UNKNOWN_MEMBER_ID:
                    self._forget_member("heartbeat: unknown member id")
            elif error == FENCED_INSTANCE_ID:
                self._fence()
            elif error in _COORDINATOR_MOVED:
                self._coordinator_unknown(f"heartbeat: error {error}")

    def _fence(self) -> FencedInstanceError:
        self._mark_lost("fenced instance id")
        self._fatal = fatal = FencedInstanceError(
            f"another process joined group {self._group!r} with group_instance_id "
            f"{self._instance_id!r} (CAPGROUP_GROUP_INSTANCE_ID); this member stops"
        )
        self._stopping = True
        self._leave_on_stop = False
        self._stop_event.set()
        return fatal

    async def _metadata_watch_loop(self) -> None:
        """Rejoin when a subscribed topic gains partitions, so the leader places them."""
        while True:
            await anyio.sleep(max(self._settings.heartbeat_interval_ms / 1000, 1.0) * 3)
            if self._state is not MemberState.STABLE:
                continue
            try:
                known = await self._transport.partitions(self._topics)
            except CONNECTION_ERRORS:
                continue
            current = {t: frozenset(known.get(t, ())) for t in self._topics}
            if self._known_partitions and current != self._known_partitions:
                self.request_rejoin("subscribed topics changed partitions")
            self._known_partitions = current

    async def _capacity_watch_loop(self) -> None:
        """Rejoin when the member's own capacity changes (budget lowered, memory pressure,
        draining): the leader then sheds partitions cooperatively, which is how a member says
        "I cannot take more, find someone else"."""
        while True:
            await anyio.sleep(self._settings.heartbeat_interval_ms / 1000)
            advertised = self._advertised
            if self._state is not MemberState.STABLE or advertised is None:
                continue
            current = self._capacity()
            if _limits(current) != _limits(advertised):
                _log.info(
                    "capacity_changed",
                    max_partitions=current.max_partitions,
                    memory_budget_bytes=current.memory_budget_bytes,
                    draining=current.draining,
                    previous_max_partitions=advertised.max_partitions,
                    previous_memory_budget_bytes=advertised.memory_budget_bytes,
                )
                self.request_rejoin("advertised capacity changed")
                # The next join re-reads the capacity; until then don't ask again.
                self._advertised = replace(current, owned=advertised.owned)
                continue
            figures = self._group_figures
            stuck = self._settings.session_timeout_ms / 1000
            if (
                figures is not None
                and figures.pending > 0
                and anyio.current_time() - self._applied_at > stuck
            ):
                # A pending move waits for its old owner to revoke and rejoin. When that owner
                # died and a static twin took its place from the broker's cache (no rebalance),
                # nobody rejoins and the partition stays unowned: ask for the next round.
                self.request_rejoin("pending moves were not released")
                self._applied_at = anyio.current_time()

    # ------------------------------------------------------------------ commits -------
    async def commit(self, offsets: Mapping[TopicPartition, int], metadata: str = "") -> Generation:
        """Commit ``offsets`` (the next offset to read, per partition) under the current
        generation; returns the generation the commit was made under (a later one than when
        called if it waited out a rebalance; the current one when ``offsets`` is empty).

        Waits while a join or sync is in flight, so call it from a task of its own: a fetch
        loop that awaited it would stall retained partitions for the whole rebalance. Raises
        :class:`CommitFencedError` when a partition is not owned in a live generation (nothing
        is committed then; never retry it), and :class:`CommitFailedError` when the commit
        cannot complete within the rebalance timeout.
        """
        if not offsets:
            return self._generation
        wanted = dict(offsets)
        # The ownership the caller's offsets belong to; a partition lost or revoked and gained
        # again while this commit waits is a different ownership.
        ownership = {tp: self._gained_at.get(tp) for tp in wanted}
        deadline = anyio.current_time() + self._settings.rebalance_timeout_ms / 1000
        refused: Generation | None = None
        generation = NO_GENERATION

        async def prepare() -> wire.OffsetCommit:
            nonlocal generation
            generation = await self._committable_generation(deadline, refused)
            self._check_commit(wanted, ownership)
            return self._commit_request(generation, wanted, metadata)

        while True:
            response = await self._until_answered("commit", deadline, prepare, _partition_errors)
            errors = {
                TopicPartition(topic, partition): error
                for topic, partitions in response.topics
                for partition, error in partitions
                if error != NONE
            }
            if not errors:
                _log.debug(
                    "engine_offsets_committed",
                    generation=generation.generation_id,
                    offsets={f"{tp.topic}-{tp.partition}": o for tp, o in sorted(wanted.items())},
                )
                return generation
            codes = set(errors.values())
            if codes & _GENERATION_GONE or FENCED_INSTANCE_ID in codes:
                if generation == self._generation:
                    if FENCED_INSTANCE_ID in codes:
                        self._fence()
                    else:
                        self._mark_lost(f"commit refused with errors {sorted(codes)}")
                _log.warning(
                    "engine_commit_fenced",
                    generation=generation.generation_id,
                    errors=sorted(codes),
                )
                raise CommitFencedError(f"commit refused with errors {sorted(codes)}", errors)
            if REBALANCE_IN_PROGRESS in codes:
                # The group is between generations: retry under the next one, if we still own
                # the partitions then; never under this one again.
                refused = generation
                if not self._rejoin.is_set():
                    self.request_rejoin("commit answered REBALANCE_IN_PROGRESS")
                continue
            raise CommitFailedError(f"commit refused with errors {sorted(codes)}")

    def _check_commit(
        self, wanted: Mapping[TopicPartition, int], ownership: Mapping[TopicPartition, int | None]
    ) -> None:
        """Raise :class:`CommitFencedError` unless this member may commit ``wanted`` now."""
        not_owned = wanted.keys() - self._committable
        if not_owned:
            raise CommitFencedError("partitions not owned by this member", not_owned)
        changed = [tp for tp, gained in ownership.items() if self._gained_at.get(tp) != gained]
        if changed:
            raise CommitFencedError("ownership changed while the commit waited", changed)
        session = self._settings.session_timeout_ms / 1000
        if anyio.current_time() - self._last_heartbeat_ok > session:
            self._mark_lost("commit attempted after a whole session without heartbeat")
            raise CommitFencedError("session expired locally", wanted)

    async def _committable_generation(
        self, deadline: float, refused: Generation | None
    ) -> Generation:
        while True:
            generation = self._generation
            if self._state in COMMITTABLE_STATES and generation.valid and generation != refused:
                return generation
            if self._lost_reason is not None or (self._stopping and not generation.valid):
                raise CommitFencedError("generation lost")
            if refused is not None and self._state is MemberState.UNJOINED:
                raise CommitFencedError("generation lost while the group rebalanced")
            waiting = self._state_changed
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                raise CommitFailedError("no committable generation before the deadline")
            with anyio.move_on_after(remaining):
                await waiting.wait()

    def _commit_request(
        self, generation: Generation, offsets: Mapping[TopicPartition, int], metadata: str
    ) -> wire.OffsetCommit:
        by_topic: dict[str, list[tuple[int, int, str]]] = {}
        for tp, offset in sorted(offsets.items()):
            by_topic.setdefault(tp.topic, []).append((tp.partition, offset, metadata))
        return wire.OffsetCommit(
            self._group, generation.generation_id, generation.member_id, self._instance_id, by_topic
        )

    async def committed(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int | None]:
        """The group's committed offsets for ``partitions`` (``None`` where none exists).

        Raises :class:`CommitFailedError` when the coordinator cannot answer within the
        rebalance timeout.
        """
        found = await self.committed_with_metadata(partitions)
        return {tp: None if commit is None else commit[0] for tp, commit in found.items()}

    async def committed_with_metadata(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, str] | None]:
        """The group's committed offset and its metadata string for each of ``partitions``
        (``None`` where none exists), from one OffsetFetch; errors as :meth:`committed`."""
        wanted = sorted(set(partitions))
        by_topic: dict[str, list[int]] = {}
        for tp in wanted:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        deadline = anyio.current_time() + self._settings.rebalance_timeout_ms / 1000

        async def prepare() -> Any:
            return wire.OffsetFetchRequest(self._group, list(by_topic.items()))

        def errors_of(response: Any) -> list[int]:
            return [getattr(response, "error_code", NONE), *_partition_errors(response)]

        response = await self._until_answered("offset fetch", deadline, prepare, errors_of)
        result: dict[TopicPartition, tuple[int, str] | None] = dict.fromkeys(wanted)
        for topic, parts in response.topics:
            for part in parts:
                tp = TopicPartition(topic, part[0])
                if tp in result and part[1] >= 0:
                    result[tp] = (part[1], part[2] or "")
        return result

    async def group_batch_partitions(self) -> dict[str, frozenset[TopicPartition]] | None:
        """The batch partitions each live member of the group owns now, by member id, read
        from the coordinator (DescribeGroups) and decoded from each member's assignment: its
        partitions minus the relay-only ones its :class:`AssignmentInfo` lists. None when the
        view cannot be read (no coordinator, an error, or the group is rebalancing: a group
        that is not Stable has no current assignment)."""
        if not self._connected:
            return None
        try:
            response = await self._coordinated(
                wire.DescribeGroups([self._group]), coordination=False
            )
        except (_RetryableError, Errors.KafkaError, *CONNECTION_ERRORS) as exc:
            _log.info("group_view_failed", error=type(exc).__name__)
            return None
        groups = [g for g in response.groups if g[1] == self._group]
        if len(groups) != 1:
            return None
        error, _, state, _, _, members = groups[0][:6]
        if error != NONE:
            if error in _COORDINATOR_MOVED:
                self._coordinator_unknown(f"describe groups: error {error}")
            return None
        if state != "Stable":
            return None
        view: dict[str, frozenset[TopicPartition]] = {}
        for member in members:
            member_id, raw = member[0], member[4]
            assigned, info = _decode_assignment(raw)
            relay = frozenset(info.relay_only) if info is not None else frozenset()
            view[member_id] = assigned - relay
        return view

    # ------------------------------------------------------------------ transport -----
    async def _coordinated(self, request: Any, *, coordination: bool) -> Any:
        """Send ``request`` to the group coordinator, finding it first if needed.

        ``coordination`` puts it on the connection the broker may hold for a rebalance
        (JoinGroup, SyncGroup); heartbeats and commits never queue behind those.
        """
        node = await self._find_coordinator()
        try:
            return await self._transport.send(node, request, coordination=coordination)
        except CONNECTION_ERRORS as exc:
            self._coordinator_unknown(f"{type(exc).__name__}: {exc}")
            raise _RetryableError(f"coordinator unreachable: {type(exc).__name__}") from exc

    async def _until_answered(
        self,
        what: str,
        deadline: float,
        prepare: Callable[[], Awaitable[Any]],
        errors_of: Callable[[Any], Iterable[int]],
    ) -> Any:
        """Send the request ``prepare`` builds to the coordinator until it is answered.

        Connection failures and busy or moved coordinators (the codes ``errors_of`` finds in
        the response) are retried, with backoff by consecutive failures and a fresh
        ``prepare()`` each time (it may wait, or raise when the request no longer makes
        sense); any other answer is returned. Raises :class:`CommitFailedError` when a
        failure happens at or after ``deadline``.
        """
        failures = 0
        while True:
            request = await prepare()
            try:
                response = await self._coordinated(request, coordination=False)
            except _RetryableError as retry:
                reason = retry.reason
            else:
                busy = set(errors_of(response)) & _COORDINATOR_BUSY
                if not busy:
                    return response
                reason = f"errors {sorted(busy)}"
                if busy & _COORDINATOR_MOVED:
                    self._coordinator_unknown(f"{what}: coordinator moved")
            failures += 1
            if anyio.current_time() >= deadline:
                raise CommitFailedError(f"{what} did not complete: {reason}") from None
            await self._backoff(failures)

    async def _find_coordinator(self) -> int:
        failures = 0
        while self._coordinator_id is None:
            try:
                node = await self._transport.find_coordinator(self._group)
            except (*CONNECTION_ERRORS, Errors.KafkaError) as exc:
                failures += 1
                _log.info("coordinator_lookup_failed", error=type(exc).__name__)
                if failures >= 3:
                    raise _RetryableError(f"no coordinator: {type(exc).__name__}") from exc
                await self._backoff(failures)
                continue
            self._coordinator_id = node
            _log.info("coordinator_found", node_id=node)
        return self._coordinator_id

    def _coordinator_unknown(self, reason: str) -> None:
        if self._coordinator_id is not None:
            _log.info("coordinator_lost", node_id=self._coordinator_id, reason=reason)
        self._coordinator_id = None
        if self._connected:
            self._transport.coordinator_unknown()

    def _raise_for_coordinator(self, error: int, step: str) -> None:
        if error == NONE:
            return
        if error in _COORDINATOR_MOVED:
            self._coordinator_unknown(f"{step}: error {error}")
        raise _RetryableError(f"{step} refused with error {error}")

    def _raise_for_fatal(self, error: int) -> None:
        if error == FENCED_INSTANCE_ID:
            raise self._fence()
        if error in _FATAL_JOIN:
            raise GroupFatalError(f"cannot join group {self._group!r}: {_FATAL_JOIN[error]}")

    # ------------------------------------------------------------------ shutdown ------
    async def _shutdown(self) -> None:
        self._set_state(MemberState.STOPPED)
        generation = self._generation
        self._generation = NO_GENERATION
        self._committable = frozenset()
        if not self._connected:
            return
        self._connected = False
        try:
            if self._leave_on_stop and self._member_id and self._coordinator_id is not None:
                with anyio.move_on_after(5):
                    response = await self._transport.send(
                        self._coordinator_id,
                        wire.LeaveGroup(self._group, self._member_id, self._instance_id),
                        coordination=False,
                    )
                    _log.info(
                        "group_left",
                        generation=generation.generation_id,
                        error=getattr(response, "error_code", None),
                    )
        except _LEAVE_ERRORS as exc:
            _log.warning("leave_group_failed", error=type(exc).__name__)
        finally:
            with contextlib.suppress(Exception):
                await self._transport.close()
        if self._fatal is not None:
            raise self._fatal


def _partition_errors(response: Any) -> list[int]:
    """The partition error codes of an OffsetCommit or OffsetFetch response."""
    return [part[-1] for _, parts in response.topics for part in parts]


def _decode_assignment(
    raw: bytes | None,
) -> tuple[frozenset[TopicPartition], AssignmentInfo | None]:
    """The partitions of an assignment and the leader's :class:`AssignmentInfo` (None when
    absent or unreadable: the partitions still count)."""
    if not raw:
        return frozenset(), None
    try:
        assignment = wire.MemberAssignment.decode(raw)
    except (ValueError, TypeError, EOFError) as exc:
        # A leader running something else sent bytes we cannot read: own nothing rather than
        # guess, and say so; the next rebalance may fix it.
        _log.error("assignment_undecodable", error=str(exc), size=len(raw))
        return frozenset(), None
    partitions = frozenset(
        TopicPartition(topic, partition)
        for topic, partitions in assignment.assignment
        for partition in partitions
    )
    info: AssignmentInfo | None = None
    if assignment.user_data:
        try:
            info = decode_assignment_info(assignment.user_data)
        except MetadataDecodeError as exc:
            _log.warning("assignment_info_undecodable", reason=exc.reason, code=exc.code)
    return partitions, info


def _subscription(raw: bytes, cache: SubscriptionCache) -> tuple[str, ...]:
    """Topics a member subscribes to, or none if its metadata does not decode."""
    try:
        return decode_member_metadata(raw, cache).topics
    except MetadataDecodeError:  # another member's bytes: plan_group reports them
        return ()


def _cost(tp: TopicPartition, adv: CapacityAdvertisement, relay: frozenset[TopicPartition]) -> int:
    """What ``tp`` costs the member: ``relay_partition_bytes`` for a relay-only partition
    (the topic's batch cost if the member does not advertise relay), else the topic's cost."""
    if tp in relay and adv.relay_partition_bytes > 0:
        return adv.relay_partition_bytes
    return adv.cost_of(tp.topic)


def _within(
    assigned: frozenset[TopicPartition],
    held: frozenset[TopicPartition],
    adv: CapacityAdvertisement,
    relay: frozenset[TopicPartition] = frozenset(),
) -> frozenset[TopicPartition]:
    """The part of ``assigned`` the member takes when it exceeds its own budget: partitions
    it already holds first, then in order, while the count and bytes fit (relay-only ones,
    ``relay``, at their relay cost)."""
    taken: list[TopicPartition] = []
    used = 0
    for tp in sorted(assigned, key=lambda tp: (tp not in held, tp)):
        cost = _cost(tp, adv, relay)
        if len(taken) < adv.max_partitions and used + cost <= adv.memory_budget_bytes:
            taken.append(tp)
            used += cost
    return frozenset(taken)


def _exceeds(
    assigned: frozenset[TopicPartition],
    adv: CapacityAdvertisement,
    relay: frozenset[TopicPartition] = frozenset(),
) -> bool:
    """Whether ``assigned`` breaks the member's own advertised budget (relay-only partitions,
    ``relay``, cost ``relay_partition_bytes``)."""
    if len(assigned) > adv.max_partitions:
        return True
    return sum(_cost(tp, adv, relay) for tp in assigned) > adv.memory_budget_bytes


def _limits(adv: CapacityAdvertisement) -> tuple[Any, ...]:
    """The parts of an advertisement that change what the member can take."""
    return (
        adv.max_partitions,
        adv.memory_budget_bytes,
        tuple(sorted(adv.partition_bytes.items())),
        adv.default_partition_bytes,
        adv.weight,
        adv.rack,
        adv.draining,
        adv.relay_partition_bytes,
    )


def _names(partitions: Iterable[TopicPartition]) -> list[str]:
    return [f"{tp.topic}-{tp.partition}" for tp in sorted(partitions)]
