"""A scripted group coordinator: the classic group protocol behind ``CoordinatorTransport``.

This is a scripted protocol peer for deterministic tests, not a Kafka. It keeps one group in
memory and answers the engine's requests (FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
LeaveGroup, OffsetCommit, OffsetFetch, DescribeGroups) the way Kafka's classic coordinator
does in the cases the engine depends on, with aiokafka's own response classes. Tests script
it: inject error codes, hold requests at a gate, move the coordinator, expire a member's
session, and await conditions instead of sleeping. The broker-backed tests remain the proof
that the engine behaves the same against Kafka.

Script API (``coord = ScriptedCoordinator({"t": 4})``, one ``coord.transport()`` per engine):

- ``coord.fail(api, code, times=1)``: the next ``times`` requests of ``api`` ("join", "sync",
  "heartbeat", "leave", "commit", "fetch", "describe" or "any") are answered with ``code``,
  unprocessed;
  ``code`` may also be an exception class the transport raises (a broken connection).
- ``gate = coord.gate(api)``: requests of ``api`` wait there (``await gate.arrived.wait()``)
  until ``gate.release()``; they are processed with the group's state at release time.
- ``coord.move(node_id)``: the coordinator moves; requests to the old node get NOT_COORDINATOR.
- ``coord.expire(member_id)``: the member's session expires (it is removed, a rebalance starts).
- ``await coord.wait_until(predicate)`` / ``await coord.stable(generation)``: wait for a
  condition; ``coord.log`` (every request), ``coord.commits`` (accepted commits with their
  generation), ``coord.committed``, ``coord.generation``, ``coord.state``, ``coord.members``,
  ``coord.assignment_of(member_id)`` observe it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

import anyio
from aiokafka import errors as Errors  # noqa: N812 (aiokafka's own idiom)

from capgroup.membership import wire
from capgroup.types import TopicPartition

Api = Literal["join", "sync", "heartbeat", "leave", "commit", "fetch", "describe"]
_APIS: dict[int, Api] = {
    11: "join",
    14: "sync",
    12: "heartbeat",
    13: "leave",
    8: "commit",
    9: "fetch",
    15: "describe",
}

NONE: int = Errors.NoError.errno
NOT_COORDINATOR: int = Errors.NotCoordinatorForGroupError.errno
ILLEGAL_GENERATION: int = Errors.IllegalGenerationError.errno
UNKNOWN_MEMBER_ID: int = Errors.UnknownMemberIdError.errno
REBALANCE_IN_PROGRESS: int = Errors.RebalanceInProgressError.errno
MEMBER_ID_REQUIRED: int = Errors.MemberIdRequired.errno
FENCED_INSTANCE_ID = 82  # no class in aiokafka 0.14

State = Literal["empty", "preparing", "completing", "stable"]


@dataclass
class Member:
    """One member as the coordinator knows it."""

    member_id: str
    instance_id: str | None
    protocol: str
    metadata: bytes
    session_s: float
    rebalance_s: float
    last_seen: float


@dataclass
class Round:
    """One rebalance: who has (re)joined, and what the round produced."""

    deadline: float
    joined: set[str] = field(default_factory=set)
    generation: int | None = None
    leader: str = ""
    members: list[tuple[str, str | None, bytes]] = field(default_factory=list)


class Commit(NamedTuple):
    """Offsets the coordinator accepted, and the generation and member they came with."""

    generation: int
    member_id: str
    offsets: dict[TopicPartition, int]


@dataclass(frozen=True)
class Logged:
    """A request the coordinator received, and the error code it answered (top-level or the
    first partition's)."""

    api: Api
    node_id: int
    fields: dict[str, Any]
    error: int


@dataclass
class Gate:
    """Holds requests of one API until :meth:`release`."""

    arrived: anyio.Event = field(default_factory=anyio.Event)
    opened: anyio.Event = field(default_factory=anyio.Event)
    #: Requests that arrived while the gate was closed.
    held: int = 0

    def release(self) -> None:
        """Let every held and every later request through."""
        self.opened.set()


class ScriptedCoordinator:
    """One consumer group's coordinator, in process. See the module docstring."""

    def __init__(self, topics: Mapping[str, int], *, node_id: int = 0) -> None:
        self.topics = dict(topics)
        self.node_id = node_id
        self.state: State = "empty"
        self.generation = 0
        self.leader = ""
        self.members: dict[str, Member] = {}
        self.assignments: dict[str, bytes] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.commits: list[Commit] = []
        self.log: list[Logged] = []
        self.lookups = 0
        self._static: dict[str, str] = {}  # instance id -> current member id
        self._pending: set[str] = set()  # ids handed out with MEMBER_ID_REQUIRED
        self._round: Round | None = None
        self._faults: list[tuple[Api | Literal["any"], int | type[BaseException], int]] = []
        self._gates: dict[Api | Literal["any"], Gate] = {}
        self._ids = itertools.count(1)
        self._changed = anyio.Event()

    # ------------------------------------------------------------------ script API ----
    def transport(self) -> ScriptedTransport:
        """A transport for one engine."""
        return ScriptedTransport(self)

    def fail(
        self, api: Api | Literal["any"], code: int | type[BaseException], times: int = 1
    ) -> None:
        """Answer the next ``times`` requests of ``api`` with ``code`` (or raise it)."""
        self._faults.append((api, code, times))

    def gate(self, api: Api | Literal["any"]) -> Gate:
        """Hold requests of ``api`` until the returned gate is released."""
        gate = self._gates[api] = Gate()
        return gate

    def move(self, node_id: int) -> None:
        """Move the coordinator to ``node_id``."""
        self.node_id = node_id
        self._notify()

    def expire(self, member_id: str) -> None:
        """The member's session expires now."""
        self._remove(member_id)

    def assignment_of(self, member_id: str) -> frozenset[TopicPartition]:
        """Partitions the current generation's assignment gives ``member_id``."""
        raw = self.assignments.get(member_id)
        if not raw:
            return frozenset()
        decoded = wire.MemberAssignment.decode(raw)
        return frozenset(TopicPartition(t, p) for t, ps in decoded.assignment for p in ps)

    def received(self, api: Api, error: int | None = None) -> list[Logged]:
        """Logged requests of ``api`` (answered with ``error``, if given)."""
        return [e for e in self.log if e.api == api and error in (None, e.error)]

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is re-checked after every request."""
        while not predicate():
            await self._changed.wait()

    async def stable(self, generation: int) -> None:
        """Wait until the group is stable at ``generation`` or later."""
        await self.wait_until(lambda: self.state == "stable" and self.generation >= generation)

    def _notify(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    # ------------------------------------------------------------------ dispatch ------
    async def handle(self, node_id: int, request: Any) -> Any:
        """Answer one request the way the coordinator at ``node_id`` would."""
        struct = request.build(type(request)._CLASSES[-1])
        api = _APIS[struct.API_KEY]
        fields = dict(struct.to_object())
        gate = self._gates.get(api) or self._gates.get("any")
        if gate is not None and not gate.opened.is_set():
            gate.held += 1
            gate.arrived.set()
            self._notify()
            await gate.opened.wait()
        self._expire_sessions()
        fault = self._take_fault(api)
        if isinstance(fault, type):
            self._notify()
            raise fault(f"scripted {api} failure")
        if fault is not None:
            response = _error_response(struct, fault)
        elif node_id != self.node_id:
            response = _error_response(struct, NOT_COORDINATOR)
        else:
            response = await getattr(self, f"_{api}")(struct)
        error = getattr(response, "error_code", None) or NONE
        if error == NONE and api in ("commit", "fetch"):
            error = next((p[-1] for _, parts in response.topics for p in parts if p[-1]), NONE)
        self.log.append(Logged(api, node_id, fields, error))
        self._notify()
        return response

    def _take_fault(self, api: Api) -> int | type[BaseException] | None:
        for i, (target, code, times) in enumerate(self._faults):
            if target in (api, "any"):
                if times <= 1:
                    del self._faults[i]
                else:
                    self._faults[i] = (target, code, times - 1)
                return code
        return None

    def _refusal(self, struct: Any, *, generation: bool = True) -> int:
        """Kafka's member checks: fenced instance, unknown member, stale generation."""
        instance = getattr(struct, "group_instance_id", None)
        if (
            instance is not None
            and self._static.get(instance, struct.member_id) != struct.member_id
        ):
            return FENCED_INSTANCE_ID
        member = self.members.get(struct.member_id)
        if member is None:
            return UNKNOWN_MEMBER_ID
        member.last_seen = anyio.current_time()
        if generation and struct.generation_id != self.generation:
            return ILLEGAL_GENERATION
        return NONE

    # ------------------------------------------------------------------ group ---------
    async def _join(self, req: Any) -> Any:
        protocol, metadata = req.group_protocols[0]
        now = anyio.current_time()
        instance = req.group_instance_id
        member_id = req.member_id
        if not member_id and instance is None:
            member_id = f"member-{next(self._ids)}"
            self._pending.add(member_id)
            return _error_response(req, MEMBER_ID_REQUIRED, member_id=member_id)
        if not member_id:  # a static member (re)starting: it replaces its previous member id
            member_id = f"{instance}-{next(self._ids)}"
            old = self._static.get(instance)
            self._static[instance] = member_id
            if old is not None and old in self.members:
                previous = self.members.pop(old)
                self.members[member_id] = replace(
                    previous, member_id=member_id, metadata=metadata, last_seen=now
                )
                self.assignments[member_id] = self.assignments.pop(old, b"")
                if self.leader == old:
                    self.leader = member_id
                if self._round is not None and old in self._round.joined:
                    self._round.joined.discard(old)
                if self.state == "stable" and previous.protocol == protocol:
                    # Kafka answers from its cache: no rebalance, the old assignment stands.
                    return self._join_response(
                        req, self.generation, self.leader, member_id, self._member_list()
                    )
        else:
            refusal = self._refusal(req, generation=False)
            if refusal == UNKNOWN_MEMBER_ID and member_id in self._pending:
                refusal = NONE
            if refusal != NONE:
                return _error_response(req, refusal)
            self._pending.discard(member_id)
        self.members[member_id] = Member(
            member_id,
            instance,
            protocol,
            metadata,
            req.session_timeout / 1000,
            req.rebalance_timeout / 1000,
            now,
        )
        round_ = self._round if self.state == "preparing" else None
        if round_ is None:
            round_ = self._prepare_rebalance()
        round_.joined.add(member_id)
        self._notify()
        while round_.generation is None:
            if round_.joined >= self.members.keys():
                self._complete(round_)
                break
            with anyio.move_on_after(max(round_.deadline - anyio.current_time(), 0)):
                await self._changed.wait()
            if anyio.current_time() >= round_.deadline and round_.generation is None:
                for late in set(self.members) - round_.joined:
                    self._remove(late, rebalance=False)
        assert round_.generation is not None
        refusal = self._refusal(_Probe(member_id, instance), generation=False)
        if refusal != NONE:  # removed, or replaced by its static twin, while it waited
            return _error_response(req, refusal)
        return self._join_response(req, round_.generation, round_.leader, member_id, round_.members)

    def _join_response(
        self, req: Any, generation: int, leader: str, member_id: str, members: list[Any]
    ) -> Any:
        return req.RESPONSE_TYPE(
            throttle_time_ms=0,
            error_code=NONE,
            generation_id=generation,
            group_protocol=req.group_protocols[0][0],
            leader_id=leader,
            member_id=member_id,
            members=members if member_id == leader else [],
        )

    def _member_list(self) -> list[tuple[str, str | None, bytes]]:
        return [(m.member_id, m.instance_id, m.metadata) for m in self.members.values()]

    def _prepare_rebalance(self) -> Round:
        timeout = max((m.rebalance_s for m in self.members.values()), default=1.0)
        self._round = Round(deadline=anyio.current_time() + timeout)
        self.state = "preparing"
        self._notify()
        return self._round

    def _complete(self, round_: Round) -> None:
        self.generation += 1
        if self.leader not in round_.joined:
            self.leader = next(iter(self.members))
        round_.generation, round_.leader = self.generation, self.leader
        round_.members = self._member_list()
        self.state = "completing"
        self.assignments = {}
        self._round = None
        self._notify()

    def _remove(self, member_id: str, *, rebalance: bool = True) -> None:
        member = self.members.pop(member_id, None)
        if member is None:
            return
        if member.instance_id is not None and self._static.get(member.instance_id) == member_id:
            del self._static[member.instance_id]
        self.assignments.pop(member_id, None)
        if self._round is not None:
            self._round.joined.discard(member_id)
        if self.leader == member_id:
            self.leader = ""
        if not self.members:
            self.state, self._round = "empty", None
        elif rebalance and self.state != "preparing":
            self._prepare_rebalance()
        self._notify()

    def _expire_sessions(self) -> None:
        now = anyio.current_time()
        joined = self._round.joined if self._round is not None else set()
        for m in list(self.members.values()):
            if m.member_id not in joined and now - m.last_seen > m.session_s:
                self._remove(m.member_id)

    async def _sync(self, req: Any) -> Any:
        refusal = self._refusal(req)
        if refusal != NONE:
            return _error_response(req, refusal)
        if self.state == "preparing":
            return _error_response(req, REBALANCE_IN_PROGRESS)
        generation = self.generation
        if self.state == "completing" and req.member_id == self.leader:
            self.assignments = dict.fromkeys(self.members, b"") | dict(req.group_assignment)
            self.state = "stable"
            self._notify()
        await self.wait_until(lambda: self.state != "completing" or self.generation != generation)
        if self.state != "stable" or self.generation != generation:
            return _error_response(req, REBALANCE_IN_PROGRESS)
        return req.RESPONSE_TYPE(
            throttle_time_ms=0,
            error_code=NONE,
            member_assignment=self.assignments.get(req.member_id, b""),
        )

    async def _heartbeat(self, req: Any) -> Any:
        refusal = self._refusal(req)
        if refusal == NONE and self.state == "preparing":
            refusal = REBALANCE_IN_PROGRESS
        return _error_response(req, refusal)

    async def _leave(self, req: Any) -> Any:
        results = []
        for member_id, instance in req.members:
            probe = _Probe(member_id, instance)
            error = self._refusal(probe, generation=False)
            if error == NONE:
                self._remove(member_id)
            results.append((member_id, instance, error))
        return req.RESPONSE_TYPE(throttle_time_ms=0, error_code=NONE, members=results)

    async def _commit(self, req: Any) -> Any:
        error = self._refusal(req)
        if error == NONE and self.state == "completing":
            error = REBALANCE_IN_PROGRESS
        if error == NONE:
            offsets = {
                TopicPartition(topic, part[0]): part[1]
                for topic, parts in req.topics
                for part in parts
            }
            self.committed.update(offsets)
            self.commits.append(Commit(req.generation_id, req.member_id, offsets))
        return _error_response(req, error)

    async def _fetch(self, req: Any) -> Any:
        topics = [
            (topic, [(p, self.committed.get(TopicPartition(topic, p), -1), "", NONE) for p in ps])
            for topic, ps in req.topics
        ]
        return req.RESPONSE_TYPE(throttle_time_ms=0, topics=topics, error_code=NONE)

    async def _describe(self, req: Any) -> Any:
        """Every member with its current assignment (empty unless the group is stable), as
        Kafka answers DescribeGroups."""
        state = {
            "empty": "Empty",
            "preparing": "PreparingRebalance",
            "completing": "CompletingRebalance",
            "stable": "Stable",
        }[self.state]
        stable = self.state == "stable"
        members = [
            (m.member_id, "client", "/127.0.0.1", b"", self.assignments.get(m.member_id, b""))
            for m in self.members.values()
        ]
        groups = [
            (NONE, group, state, "consumer", "capgroup" if stable else "", members)
            for group in req.groups
        ]
        return req.RESPONSE_TYPE(throttle_time_ms=0, groups=groups)


@dataclass
class _Probe:
    """The member fields ``_refusal`` checks, for requests that name several members."""

    member_id: str
    group_instance_id: str | None


def _error_response(struct: Any, code: int, **extra: Any) -> Any:
    """The response of ``struct``'s type carrying ``code`` (per partition where it has them)."""
    kind = _APIS[struct.API_KEY]
    fields: dict[str, Any] = {"throttle_time_ms": 0}
    if kind == "join":
        fields |= {
            "error_code": code,
            "generation_id": -1,
            "group_protocol": "",
            "leader_id": "",
            "member_id": struct.member_id,
            "members": [],
        }
    elif kind == "sync":
        fields |= {"error_code": code, "member_assignment": b""}
    elif kind == "leave":
        fields |= {"error_code": code, "members": []}
    elif kind == "commit":
        fields["topics"] = [(t, [(part[0], code) for part in parts]) for t, parts in struct.topics]
    elif kind == "describe":
        fields["groups"] = [(code, g, "", "", "", []) for g in struct.groups]
    elif kind == "fetch":
        fields |= {
            "error_code": code,
            "topics": [(t, [(p, -1, "", code) for p in ps]) for t, ps in struct.topics],
        }
    else:
        fields["error_code"] = code
    return struct.RESPONSE_TYPE(**(fields | extra))


class ScriptedTransport:
    """:class:`capgroup.membership.transport.CoordinatorTransport` onto a
    :class:`ScriptedCoordinator`."""

    def __init__(self, coordinator: ScriptedCoordinator) -> None:
        self.coordinator = coordinator
        self.started = False
        self.closed = False
        self.coordinator_unknowns = 0

    async def start(self, topics: Iterable[str]) -> None:
        """Nothing to connect to."""
        self.started, self.closed = True, False

    async def find_coordinator(self, group_id: str) -> int:
        """The coordinator's current node."""
        self.coordinator.lookups += 1
        return self.coordinator.node_id

    async def send(self, node_id: int, request: Any, *, coordination: bool) -> Any:
        """Hand ``request`` to the coordinator as if it arrived at ``node_id``."""
        if self.closed:
            raise Errors.KafkaConnectionError("transport closed")
        return await self.coordinator.handle(node_id, request)

    async def partitions(self, topics: Iterable[str]) -> dict[str, frozenset[int]]:
        """Partitions of the coordinator's topics."""
        return {t: frozenset(range(self.coordinator.topics.get(t, 0))) for t in topics}

    def coordinator_unknown(self) -> None:
        """Counted, for tests."""
        self.coordinator_unknowns += 1

    async def close(self) -> None:
        """Closed: later sends fail like a closed client's."""
        self.closed = True
