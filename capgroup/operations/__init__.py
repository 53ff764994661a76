"""Operating a member: Prometheus metrics read from the consumer at scrape time, the
``/healthz`` and ``/readyz`` endpoints, and :func:`run_with_operations`, which serves them
beside a running consumer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from capgroup._lazy import lazy_exports

if TYPE_CHECKING:
    from capgroup.operations.describe import (
        GroupNotFoundError,
        GroupState,
        MemberState,
        PartitionLag,
        describe_group,
    )
    from capgroup.operations.doctor import Finding
    from capgroup.operations.doctor_gather import DoctorReport, run_doctor
    from capgroup.operations.hotkeys import (
        HotKey,
        HotkeysReport,
        KeySketch,
        TopicNotFoundError,
    )
    from capgroup.operations.http import (
        HealthCheck,
        OperationsServer,
        OperationsServerError,
        liveness,
        readiness,
        serve_operations,
    )
    from capgroup.operations.metrics import (
        ConsumerCollector,
        ObservableConsumer,
        metrics_registry,
        render_metrics,
    )
    from capgroup.operations.serve import RunnableConsumer, run_with_operations

__all__ = [
    "ConsumerCollector",
    "DoctorReport",
    "Finding",
    "GroupNotFoundError",
    "GroupState",
    "HealthCheck",
    "HotKey",
    "HotkeysReport",
    "KeySketch",
    "MemberState",
    "ObservableConsumer",
    "OperationsServer",
    "OperationsServerError",
    "PartitionLag",
    "RunnableConsumer",
    "TopicNotFoundError",
    "describe_group",
    "liveness",
    "metrics_registry",
    "readiness",
    "render_metrics",
    "run_doctor",
    "run_with_operations",
    "serve_operations",
]

_EXPORTS = {
    "GroupNotFoundError": "capgroup.operations.describe",
    "GroupState": "capgroup.operations.describe",
    "MemberState": "capgroup.operations.describe",
    "PartitionLag": "capgroup.operations.describe",
    "describe_group": "capgroup.operations.describe",
    "HotKey": "capgroup.operations.hotkeys",
    "HotkeysReport": "capgroup.operations.hotkeys",
    "KeySketch": "capgroup.operations.hotkeys",
    "TopicNotFoundError": "capgroup.operations.hotkeys",
    "Finding": "capgroup.operations.doctor",
    "DoctorReport": "capgroup.operations.doctor_gather",
    "run_doctor": "capgroup.operations.doctor_gather",
    "HealthCheck": "capgroup.operations.http",
    "OperationsServer": "capgroup.operations.http",
    "OperationsServerError": "capgroup.operations.http",
    "liveness": "capgroup.operations.http",
    "readiness": "capgroup.operations.http",
    "serve_operations": "capgroup.operations.http",
    "ConsumerCollector": "capgroup.operations.metrics",
    "ObservableConsumer": "capgroup.operations.metrics",
    "metrics_registry": "capgroup.operations.metrics",
    "render_metrics": "capgroup.operations.metrics",
    "RunnableConsumer": "capgroup.operations.serve",
    "run_with_operations": "capgroup.operations.serve",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
