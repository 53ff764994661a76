"""Operating a member: Prometheus metrics read from the consumer at scrape time, the
``/healthz`` and ``/readyz`` endpoints, and :func:`run_with_operations`, which serves them
beside a running consumer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from capgroup._lazy import lazy_exports

if TYPE_CHECKING:
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
    "HealthCheck",
    "ObservableConsumer",
    "OperationsServer",
    "OperationsServerError",
    "RunnableConsumer",
    "liveness",
    "metrics_registry",
    "readiness",
    "render_metrics",
    "run_with_operations",
    "serve_operations",
]

_EXPORTS = {
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
