"""Memory budget, buffer accounting and the RSS watchdog.

* :func:`derive_memory_budget` turns settings and the container's memory limit into the
  member's budget for partition buffers. It reads plain files under a root directory given as a
  parameter (``/`` in production), so tests pass a directory of fake cgroup files.
* :class:`MemoryLedger` counts the bytes each partition holds (buffered plus being flushed)
  and says when to pause fetching one partition or all of them.
* :class:`RssWatchdog` is a pure state machine over RSS samples with hysteresis; the I/O shell
  samples RSS with psutil and acts on its level.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from capgroup.log import get_logger
from capgroup.types import TopicPartition

if TYPE_CHECKING:
    from capgroup.settings import CapgroupSettings

__all__ = [
    "CONTAINER_LIMIT_ENV",
    "MemoryBudget",
    "MemoryLedger",
    "MemoryLimitSource",
    "RssWatchdog",
    "WatchdogLevel",
    "container_memory_limit",
    "derive_memory_budget",
    "effective_max_partitions",
    "memory_budget_from_settings",
    "shed_capacity",
]

_log = get_logger("runtime.memory")

#: Environment variable the Kubernetes downward API fills with the container memory limit
#: (``resourceFieldRef: {resource: limits.memory}``); read through ``CapgroupSettings``.
CONTAINER_LIMIT_ENV = "CAPGROUP_CONTAINER_MEMORY_LIMIT_BYTES"
#: cgroup v1 reports "no limit" as a page-rounded 2**63 - 1; anything this large is no limit.
CGROUP_V1_UNLIMITED_AT = 1 << 60


class MemoryLimitSource(StrEnum):
    """Where the member's memory limit came from."""

    EXPLICIT = "explicit"
    CGROUP_V2 = "cgroup_v2"
    CGROUP_V1 = "cgroup_v1"
    ENV = "env"
    PHYSICAL = "physical"


@dataclass(frozen=True, slots=True)
class MemoryBudget:
    """The member's buffer budget and the memory limit it was derived from."""

    budget_bytes: int
    #: The container (or physical) memory limit; RSS limits are fractions of it. Equal to the
    #: budget when the budget was given explicitly and no container limit was found.
    limit_bytes: int
    source: MemoryLimitSource


def _read_int_file(path: Path) -> int | None:
    """The integer in ``path``; None when missing, unreadable, "max" or not a number."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _own_cgroup_paths(root: Path) -> tuple[str | None, str | None]:
    """The process's cgroup v2 path and v1 memory-controller path from ``/proc/self/cgroup``."""
    try:
        lines = (root / "proc/self/cgroup").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None, None
    v2: str | None = None
    v1: str | None = None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(base: Path, cgroup_path: str | None) -> list[Path]:
    """``base`` joined with the cgroup path and each of its parents, ending at ``base``."""
    parts = [p for p in (cgroup_path or "").split("/") if p]
    return [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def container_memory_limit(root: Path = Path("/")) -> tuple[int, MemoryLimitSource] | None:
    """The tightest cgroup memory limit on this process, or None when unlimited or unknown.

    cgroup v2: ``memory.max`` of the process's cgroup and its ancestors ("max" is no limit).
    cgroup v1: ``memory.limit_in_bytes`` of the memory controller (huge values are no limit).
    Inside a container the process's cgroup is usually the root of ``/sys/fs/cgroup``.
    """
    v2_path, v1_path = _own_cgroup_paths(root)
    cgroup = root / "sys/fs/cgroup"
    v2 = [
        v
        for d in _ancestors(cgroup, v2_path)
        if (v := _read_int_file(d / "memory.max")) is not None
    ]
    if v2:
        return min(v2), MemoryLimitSource.CGROUP_V2
    v1 = [
        v
        for d in _ancestors(cgroup / "memory", v1_path)
        if (v := _read_int_file(d / "memory.limit_in_bytes")) is not None
        and v < CGROUP_V1_UNLIMITED_AT
    ]
    if v1:
        return min(v1), MemoryLimitSource.CGROUP_V1
    return None


def _physical_memory() -> int:
    return int(psutil.virtual_memory().total)


def derive_memory_budget(
    *,
    explicit_bytes: int | None,
    fraction: float,
    env_limit_bytes: int | None = None,
    root: Path = Path("/"),
    physical_bytes: Callable[[], int] = _physical_memory,
) -> MemoryBudget:
    """The member's buffer budget.

    ``explicit_bytes`` wins. Otherwise the limit is the tightest of the cgroup limit (v2, then
    v1) and ``env_limit_bytes`` (the downward-API value), and the budget is ``fraction`` of it.
    With neither, the limit is physical memory and a warning is logged: a host-sized budget is
    rarely what a container wants.
    """
    found = container_memory_limit(root)
    limits: list[tuple[int, MemoryLimitSource]] = [] if found is None else [found]
    if env_limit_bytes is not None:
        limits.append((env_limit_bytes, MemoryLimitSource.ENV))
    if explicit_bytes is not None:
        limit = min(limits)[0] if limits else explicit_bytes
        return MemoryBudget(explicit_bytes, limit, MemoryLimitSource.EXPLICIT)
    if limits:
        limit, source = min(limits)
        return MemoryBudget(max(int(limit * fraction), 1), limit, source)
    physical = int(physical_bytes())
    budget = max(int(physical * fraction), 1)
    _log.warning(
        "memory_budget_from_physical_memory",
        physical_bytes=physical,
        budget_bytes=budget,
        fraction=fraction,
        hint="set memory_budget_bytes or container_memory_limit_bytes",
    )
    return MemoryBudget(budget, physical, MemoryLimitSource.PHYSICAL)


def memory_budget_from_settings(
    settings: CapgroupSettings,
    *,
    root: Path = Path("/"),
    physical_bytes: Callable[[], int] = _physical_memory,
) -> MemoryBudget:
    """:func:`derive_memory_budget` from ``memory_budget_bytes``, ``memory_budget_fraction`` and
    ``container_memory_limit_bytes`` (env ``CAPGROUP_CONTAINER_MEMORY_LIMIT_BYTES``)."""
    return derive_memory_budget(
        explicit_bytes=settings.memory_budget_bytes,
        fraction=settings.memory_budget_fraction,
        env_limit_bytes=settings.container_memory_limit_bytes,
        root=root,
        physical_bytes=physical_bytes,
    )


def effective_max_partitions(
    max_partitions: int, budget_bytes: int, partition_cost: int, relay_partition_bytes: int = 0
) -> int:
    """Partitions this member can hold, the ``max_partitions`` it advertises.

    Relay off (``relay_partition_bytes`` 0): ``min(max_partitions, budget // partition_cost)``.
    Relay on, with ``batch = budget // partition_cost``: ``min(max_partitions, batch +
    (budget - batch * partition_cost) // relay_partition_bytes)``, so the count leaves a slot for
    every relay-only partition the leftover budget (after a full set of batch partitions) can
    pay for. The count never lets batch partitions exceed the budget: the assignor also checks
    the bytes, each partition at its own cost (batch or relay-only).
    """
    if partition_cost <= 0:
        raise ValueError(f"partition cost must be positive, got {partition_cost}")
    if relay_partition_bytes < 0:
        raise ValueError(f"relay partition bytes must be >= 0, got {relay_partition_bytes}")
    batch = max(budget_bytes // partition_cost, 0)
    relay = 0
    if relay_partition_bytes > 0:
        relay = max(budget_bytes - batch * partition_cost, 0) // relay_partition_bytes
    return max(min(max_partitions, batch + relay), 0)


class MemoryLedger:
    """Bytes each partition holds, buffered or being flushed, and the pause decisions on them.

    A partition pauses once it holds ``partition_limit_bytes`` (its batch cap): with one more
    fetch on top it stays within the advertised per-partition cost. All partitions pause once
    the total reaches the budget.
    """

    __slots__ = ("_held", "_limits", "_total", "budget_bytes", "partition_limit_bytes")

    def __init__(self, budget_bytes: int, partition_limit_bytes: int) -> None:
        """Start empty with the member budget and the per-partition limit."""
        if budget_bytes < 1 or partition_limit_bytes < 1:
            raise ValueError("budget and partition limit must be positive")
        self.budget_bytes = budget_bytes
        self.partition_limit_bytes = partition_limit_bytes
        self._held: dict[TopicPartition, int] = {}
        #: Per-partition limits below ``partition_limit_bytes`` (relay-only partitions).
        self._limits: dict[TopicPartition, int] = {}
        self._total = 0

    def set_partition_limit(self, tp: TopicPartition, limit_bytes: int | None) -> None:
        """Pause ``tp`` at ``limit_bytes`` instead of ``partition_limit_bytes`` (None: the
        default again). A relay-only partition costs one fetch buffer, not a batch."""
        if limit_bytes is None:
            self._limits.pop(tp, None)
        else:
            self._limits[tp] = max(limit_bytes, 1)

    @property
    def total_bytes(self) -> int:
        """Bytes held across all partitions."""
        return self._total

    @property
    def utilisation(self) -> float:
        """Total held as a fraction of the budget (may exceed 1 by one fetch per partition)."""
        return self._total / self.budget_bytes

    def held(self, tp: TopicPartition) -> int:
        """Bytes ``tp`` holds."""
        return self._held.get(tp, 0)

    def add(self, tp: TopicPartition, size: int) -> None:
        """Count ``size`` more bytes for ``tp`` (records buffered)."""
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self._held[tp] = self._held.get(tp, 0) + size
        self._total += size

    def release(self, tp: TopicPartition, size: int) -> None:
        """Stop counting ``size`` bytes of ``tp`` (flushed, dead-lettered or discarded)."""
        held = self._held.get(tp, 0)
        if not 0 <= size <= held:
            raise ValueError(f"cannot release {size} bytes of {tp}, which holds {held}")
        if size == held:
            self._held.pop(tp, None)
        else:
            self._held[tp] = held - size
        self._total -= size

    def drop(self, tp: TopicPartition) -> int:
        """Stop counting everything ``tp`` holds; returns the bytes released."""
        held = self._held.pop(tp, 0)
        self._limits.pop(tp, None)
        self._total -= held
        return held

    def should_pause_partition(self, tp: TopicPartition) -> bool:
        """Whether ``tp`` holds a whole batch's worth and must stop fetching."""
        return self._held.get(tp, 0) >= self._limits.get(tp, self.partition_limit_bytes)

    def should_pause_all(self) -> bool:
        """Whether the member's buffers reached the budget and all fetching must stop."""
        return self._total >= self.budget_bytes


class WatchdogLevel(StrEnum):
    """Memory pressure level from RSS."""

    #: Below the soft limit.
    NORMAL = "normal"
    #: Above the soft limit: advertise reduced capacity and shed partitions cooperatively.
    SOFT = "soft"
    #: Above the hard limit: flush what can be flushed and stop taking records.
    HARD = "hard"


_RANK = {WatchdogLevel.NORMAL: 0, WatchdogLevel.SOFT: 1, WatchdogLevel.HARD: 2}


class RssWatchdog:
    """RSS pressure state machine with hysteresis. Pure: feed it samples, act on its level.

    The level rises as soon as a sample reaches a limit. It falls only once a sample is below
    that limit by ``hysteresis`` of it, so RSS hovering at a limit does not flap capacity.
    """

    __slots__ = ("_level", "hard_limit_bytes", "hysteresis", "soft_limit_bytes")

    def __init__(self, soft_limit_bytes: int, hard_limit_bytes: int, hysteresis: float) -> None:
        """Limits in bytes (soft < hard); ``hysteresis`` is a fraction in [0, 1)."""
        if not 0 < soft_limit_bytes < hard_limit_bytes:
            raise ValueError(f"need 0 < soft < hard, got {soft_limit_bytes}, {hard_limit_bytes}")
        if not 0.0 <= hysteresis < 1.0:
            raise ValueError(f"hysteresis must be in [0, 1), got {hysteresis}")
        self.soft_limit_bytes = soft_limit_bytes
        self.hard_limit_bytes = hard_limit_bytes
        self.hysteresis = hysteresis
        self._level = WatchdogLevel.NORMAL

    @classmethod
    def from_settings(cls, settings: CapgroupSettings, limit_bytes: int) -> RssWatchdog:
        """Limits as ``rss_*_limit_fraction`` of ``limit_bytes``, the memory limit."""
        return cls(
            soft_limit_bytes=int(limit_bytes * settings.rss_soft_limit_fraction),
            hard_limit_bytes=int(limit_bytes * settings.rss_hard_limit_fraction),
            hysteresis=settings.rss_hysteresis_fraction,
        )

    @property
    def level(self) -> WatchdogLevel:
        """Current level."""
        return self._level

    def observe(self, rss_bytes: int) -> WatchdogLevel:
        """Fold in one RSS sample; returns the (possibly new) level."""
        keep = 1.0 - self.hysteresis
        if rss_bytes >= self.hard_limit_bytes:
            target = WatchdogLevel.HARD
        elif rss_bytes >= self.soft_limit_bytes:
            target = WatchdogLevel.SOFT
        else:
            target = WatchdogLevel.NORMAL
        if _RANK[target] < _RANK[self._level]:
            # Falling: hold each level above target until the sample clears its release point.
            if self._level is WatchdogLevel.HARD and rss_bytes >= self.hard_limit_bytes * keep:
                target = WatchdogLevel.HARD
            elif rss_bytes >= self.soft_limit_bytes * keep:
                target = WatchdogLevel.SOFT
        self._level = target
        return target


def shed_capacity(
    owned: int, rss_bytes: int, soft_limit_bytes: int, partition_cost: int, max_partitions: int
) -> int:
    """Reduced ``max_partitions`` to advertise under SOFT pressure.

    Sheds enough partitions, at ``partition_cost`` each, to bring RSS back to the soft limit,
    and always at least one of those ``owned``; never advertises more than ``max_partitions``.
    """
    if partition_cost <= 0:
        raise ValueError(f"partition cost must be positive, got {partition_cost}")
    excess = max(rss_bytes - soft_limit_bytes, 0)
    shed = max(math.ceil(excess / partition_cost), 1)
    return max(min(owned - shed, max_partitions), 0)
