"""Helpers of the range-job tests against a real broker: settings, a group member made of the
membership engine alone (it owns the partitions and makes the fenced commits), and context
managers entered inside a task group."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup

from capgroup.membership.engine import MembershipEngine
from capgroup.membership.model import AssignmentChange
from capgroup.runtime.rangejobs.scheduler import CommitWithMetadata, RangeJobScheduler
from capgroup.runtime.rangejobs.service import RangeJobClients
from capgroup.settings import CapgroupSettings, load_settings
from capgroup.types import CapacityAdvertisement
from tests.runtime.harness import FAST

__all__ = ["owner", "rangejobs_settings", "scheduler_over", "tg_enter"]


def rangejobs_settings(
    bootstrap: str, group: str, topic: str, unique: Callable[[str], str], **overrides: Any
) -> CapgroupSettings:
    """Range jobs on, small jobs, quick timeouts, topics unique to the test."""
    values: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": group,
        "topics": topic,
        **FAST,
        "range_jobs_enabled": True,
        "range_jobs_max_records": 25,
        "range_jobs_max_in_flight": 4,
        "range_jobs_timeout_ms": 5_000,
        "range_jobs_worker_slots": 2,
        "range_jobs_topic": unique("jobs"),
        "range_jobs_completions_topic": unique("done"),
        "flush_retry_max_attempts": 1,
    }
    return load_settings(**(values | overrides))


class _Listener:
    """Owns whatever it is given; the tests drive the range jobs themselves."""

    async def on_partitions_revoked(self, change: AssignmentChange) -> None:
        pass

    async def on_partitions_assigned(self, change: AssignmentChange) -> None:
        pass

    async def on_partitions_lost(self, change: AssignmentChange) -> None:
        pass


@asynccontextmanager
async def owner(settings: CapgroupSettings) -> AsyncIterator[MembershipEngine]:
    """A group member (the membership engine alone) owning every partition of the topic."""

    def capacity() -> CapacityAdvertisement:
        return CapacityAdvertisement(
            max_partitions=8, memory_budget_bytes=1 << 30, partition_bytes={}
        )

    engine = MembershipEngine(settings, _Listener(), capacity)
    async with anyio.create_task_group() as tg:
        await tg.start(engine.run)
        yield engine
        engine.stop()


async def tg_enter(tg: TaskGroup, manager: Any) -> Any:
    """Enter ``manager`` in a task of ``tg`` (exited when the task group is cancelled)."""
    box: dict[str, Any] = {}
    ready = anyio.Event()

    async def hold() -> None:
        async with manager as value:
            box["value"] = value
            ready.set()
            await anyio.sleep_forever()

    tg.start_soon(hold)
    await ready.wait()
    return box["value"]


def scheduler_over(
    settings: CapgroupSettings,
    clients: RangeJobClients,
    engine: MembershipEngine,
    *,
    commit: CommitWithMetadata | None = None,
    member_id: str | None = None,
) -> RangeJobScheduler:
    """A range-job scheduler on ``clients`` for the partitions ``engine`` owns: it commits
    through ``commit`` (default: the engine's fenced commit) and reads the group's commit and
    metadata through the engine; offers name ``member_id`` (default: the engine's member id)."""
    return RangeJobScheduler(
        settings,
        reader=clients.scheduler_reader,
        completions=clients.completions,
        producer=clients.producer,
        commit=engine.commit if commit is None else commit,
        committed=engine.committed_with_metadata,
        member=lambda: (
            engine.generation.member_id if member_id is None else member_id,
            engine.generation.generation_id,
        ),
    )
