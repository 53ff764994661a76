"""Range jobs (issue 14, opt-in per topic): a lagging partition's backlog cut into offset
ranges that any member with spare capacity processes, committed gap-free.

- :mod:`~capgroup.runtime.rangejobs.window`: the pure completion window (jobs as half-open
  offset ranges, the frontier, finished ranges beyond it, cutting, leases, timeouts);
- :mod:`~capgroup.runtime.rangejobs.jobs_wire`: job and completion records on Kafka;
- :mod:`~capgroup.runtime.rangejobs.scheduler` and :mod:`~capgroup.runtime.rangejobs.worker`:
  the partition owner's scheduler and the workers, over Kafka.

The commit-metadata encoding of finished ranges is :mod:`capgroup.protocol.completed_ranges`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from capgroup._lazy import lazy_exports

if TYPE_CHECKING:
    from capgroup.runtime.rangejobs.window import (
        CompletionWindow,
        JobLimits,
        Lease,
        RangeJob,
        cut_jobs,
    )

__all__ = ["CompletionWindow", "JobLimits", "Lease", "RangeJob", "cut_jobs"]

_EXPORTS = {
    "CompletionWindow": "capgroup.runtime.rangejobs.window",
    "JobLimits": "capgroup.runtime.rangejobs.window",
    "Lease": "capgroup.runtime.rangejobs.window",
    "RangeJob": "capgroup.runtime.rangejobs.window",
    "cut_jobs": "capgroup.runtime.rangejobs.window",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
