"""Stand-ins for the operations tests that read a consumer without running one."""

from __future__ import annotations

from typing import Any

from capgroup.runtime.stats import ConsumerStats, Counters

__all__ = ["idle_stats"]


def idle_stats(**overrides: Any) -> ConsumerStats:
    """The stats of a member that buffers nothing: no records, no pressure, nothing stopped;
    ``overrides`` set any field."""
    values: dict[str, Any] = {
        "counters": Counters(),
        "owned_partitions": 0,
        "advertised_max_partitions": 4,
        "budget_bytes": 1000,
        "buffered_bytes": 0,
        "buffered_bytes_by_partition": {},
        "utilisation": 0.0,
        "rss_bytes": 0,
        "peak_rss_bytes": 0,
        "memory_pressure": "off",
        "fetch_paused": False,
        "stopped_partitions": frozenset(),
        "flush_bytes_per_second": 0.0,
        "ingress_rates": {},
    }
    return ConsumerStats(**(values | overrides))
