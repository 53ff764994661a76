"""What a chaos member records about itself: the sink of flushed records and the audit log.

Both chaos members (the BatchingConsumer service and the engine-only member) use this, so the
invariants read one format. Configuration comes from the environment the driver sets:

* ``CHAOS_DIR``: the run directory; ``CHAOS_MEMBER``: the member's name; ``CHAOS_INC``: which
  incarnation (restart) of it this process is;
* ``CHAOS_PLANT``: a planted fault for showing that an invariant catches it (tests only; see
  :mod:`tests.chaos.service` for the list; the engine-only member knows
  ``commit_before_flush`` and ``no_fencing``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import psutil

from capgroup.types import TopicPartition
from tests.chaos.logs import JsonLines

PLANTS = frozenset(
    {
        "",
        "overcommit",
        "ignore_revoke",
        "commit_before_flush",
        "drop_revoke_commits",
        "slow_takeover",
        "no_fencing",
        "relay_to_self",
        "commit_before_ack",
        "commit_past_unfinished",
        "ignore_metadata",
    }
)
#: How far ``commit_before_flush`` lets the commit run ahead of the flush: longer than the
#: invariants' clock slack, so the honest-commit check can tell the order apart.
PLANTED_FLUSH_DELAY_S = 1.5


def _tps(partitions: Iterable[TopicPartition]) -> list[list[Any]]:
    return sorted([tp.topic, tp.partition] for tp in partitions)


class ChaosAudit:
    """Sink and audit writers of one member process, fsynced on every write."""

    def __init__(self, directory: Path, member: str, inc: int) -> None:
        self.member = member
        self.inc = inc
        self.sink = JsonLines(directory / f"sink-{member}.jsonl")
        self.audit = JsonLines(directory / f"audit-{member}.jsonl")
        self.max_partitions = 0
        self.budget = 0
        self.partition_cost = 0
        self._process = psutil.Process()

    @classmethod
    def from_env(cls) -> ChaosAudit:
        """The audit of the member the driver started (``CHAOS_*`` environment)."""
        return cls(
            Path(os.environ["CHAOS_DIR"]),
            os.environ["CHAOS_MEMBER"],
            int(os.environ.get("CHAOS_INC", "0")),
        )

    def event(self, kind: str, **fields: Any) -> None:
        """Append one audit event."""
        self.audit.write(
            {"kind": kind, "t": time.time(), "member": self.member, "inc": self.inc, **fields}
        )

    def start(self, *, max_partitions: int, budget: int, partition_cost: int, **extra: Any) -> None:
        """Record the member's limits as it starts."""
        self.max_partitions, self.budget, self.partition_cost = (
            max_partitions,
            budget,
            partition_cost,
        )
        self.event(
            "start",
            pid=os.getpid(),
            max_partitions=max_partitions,
            budget=budget,
            partition_cost=partition_cost,
            **extra,
        )

    def _limits(self) -> dict[str, int]:
        return {
            "max_partitions": self.max_partitions,
            "budget": self.budget,
            "partition_cost": self.partition_cost,
        }

    def assignment(
        self,
        kind: str,
        generation: int,
        partitions: Iterable[TopicPartition],
        changed: Iterable[TopicPartition],
        buffered_bytes: int,
        relay_only: Iterable[TopicPartition] = (),
    ) -> None:
        """An applied assignment step: ``kind`` is ``assign``, ``revoke``, ``lost`` or ``stop``
        (shutdown drained and committed everything; the member leaves or, if static, waits to
        be replaced); ``partitions`` is what the member owns afterwards (its relay-only
        partitions included, and listed again in ``relay_only`` when there are any)."""
        key = {"assign": "added", "revoke": "revoked", "lost": "lost", "stop": "released"}[kind]
        relay = _tps(relay_only)
        self.event(
            kind,
            gen=generation,
            partitions=_tps(partitions),
            **{key: _tps(changed)},
            **({"relay_only": relay} if relay else {}),
            buffered_bytes=buffered_bytes,
            **self._limits(),
        )

    def flushed(
        self,
        tp: TopicPartition,
        offsets: Iterable[int],
        generation: int,
        copies: Mapping[int, dict[str, Any]] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Records of one flush reached the sink (one fsync for the whole batch); ``copies``:
        offset -> ``{"origin": [topic, p, o], "hops": n}`` of the relayed copies among them;
        ``extra``: fields of every row (a range job's ``job``, ``assigned_t``, ``sched``)."""
        now = time.time()
        copies = copies or {}
        extra = extra or {}
        self.sink.write(
            *(
                {
                    "t": now,
                    "member": self.member,
                    "inc": self.inc,
                    "gen": generation,
                    "topic": tp.topic,
                    "p": tp.partition,
                    "o": o,
                    **copies.get(o, {}),
                    **extra,
                }
                for o in offsets
            )
        )

    def relayed(
        self,
        rows: Iterable[list[Any]],
        generation: int,
        owned: Iterable[TopicPartition],
    ) -> None:
        """Records the runtime relayed, acknowledged and not yet committed
        (``on_records_relayed``): ``[topic, p, o, dest_topic, dest_p, hops, up]`` each, ``up``
        the relayed record's own origin header (``None`` for a produced record); ``owned`` is
        what the member held at that moment."""
        self.event("relay", gen=generation, relayed=list(rows), owned=_tps(owned))

    def discarded(self, tp: TopicPartition, first: int, last: int, reason: str) -> None:
        """A buffer was dropped unflushed (its records will be read again by the next owner)."""
        self.event("discard", p=tp.partition, first=first, last=last, reason=reason)

    def rss(self, buffered_bytes: int, partitions: int, generation: int) -> None:
        """One RSS sample (with the generation: the first valid one says the member joined)."""
        self.event(
            "rss",
            rss=self._process.memory_info().rss,
            buffered_bytes=buffered_bytes,
            partitions=partitions,
            gen=generation,
            **self._limits(),
        )

    async def sample_rss(
        self,
        buffered: Callable[[], int],
        owned: Callable[[], int],
        generation: Callable[[], int],
        period: float = 1.0,
    ) -> None:
        """Sample RSS every ``period`` seconds until cancelled."""
        while True:
            self.rss(buffered(), owned(), generation())
            await anyio.sleep(period)

    def wrap_transport(self, engine: Any, drop: Callable[[], bool] = lambda: False) -> None:
        """Audit every OffsetCommit the engine puts on the wire.

        Every request of the engine goes through its coordinator transport (the seam of
        ``capgroup.membership.transport``), so wrapping it records exactly what the broker was
        asked (and answered), including commits the runtime makes internally. ``drop`` plants
        a fault: while it answers True, a commit is answered "done" without being sent.
        Private attribute, on purpose: this is a test probe.
        """
        engine._transport = _AuditedTransport(engine._transport, self, drop)

    def stop(self) -> None:
        """The member is exiting normally."""
        self.event("exit")
        self.sink.close()
        self.audit.close()


def _commit_rows(request: Any) -> list[list[Any]]:
    return sorted(
        [topic, partition, offset]
        for topic, parts in request._offsets.items()
        for partition, offset, _ in parts
    )


def _metadata_rows(request: Any) -> list[list[Any]]:
    """``[topic, partition, metadata]`` of every partition committed with metadata."""
    return sorted(
        [topic, partition, metadata]
        for topic, parts in request._offsets.items()
        for partition, _, metadata in parts
        if metadata
    )


class _AuditedTransport:
    """A coordinator transport that records each OffsetCommit and the broker's answer."""

    def __init__(self, inner: Any, audit: ChaosAudit, drop: Callable[[], bool]) -> None:
        self._inner = inner
        self._audit = audit
        self._drop = drop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def send(self, node_id: int, request: Any, *, coordination: bool) -> Any:
        from capgroup.membership.wire import OffsetCommit

        if not isinstance(request, OffsetCommit):
            return await self._inner.send(node_id, request, coordination=coordination)
        if self._drop():
            # Planted: the commit never leaves the process, yet the engine hears "done".
            return SimpleNamespace(topics=[])
        sent = time.time()
        rows = _commit_rows(request)
        # Range jobs (issue 14) record finished jobs beyond the offset in the metadata.
        meta = _metadata_rows(request)
        extra = {"metadata": meta} if meta else {}
        try:
            response = await self._inner.send(node_id, request, coordination=coordination)
        except BaseException as exc:
            self._audit.event(
                "commit",
                t_sent=sent,
                gen=request._generation,
                offsets=rows,
                ok=False,
                error=type(exc).__name__,
                **extra,
            )
            raise
        errors = sorted({part[-1] for _, parts in response.topics for part in parts} - {0})
        self._audit.event(
            "commit",
            t_sent=sent,
            gen=request._generation,
            offsets=rows,
            ok=not errors,
            error=errors or None,
            **extra,
        )
        return response
