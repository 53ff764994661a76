"""Run a consumer with its operations HTTP server beside it (``capgroup run`` does).

The runtime knows nothing of HTTP: :func:`run_with_operations` starts the server of
:mod:`capgroup.operations.http` first (probes must answer while a first join is still in flight),
then runs the consumer in the same task group, and stops the server once the consumer returns.
Without ``CAPGROUP_HTTP_PORT`` it just runs the consumer.
"""

from __future__ import annotations

from typing import Protocol

import anyio
from anyio.abc import TaskStatus

from capgroup.errors import leaf_exceptions
from capgroup.operations.http import serve_operations
from capgroup.operations.metrics import ObservableConsumer

__all__ = ["RunnableConsumer", "run_with_operations"]


class RunnableConsumer(ObservableConsumer, Protocol):
    """What :func:`run_with_operations` needs: a consumer it can observe and run
    (:class:`~capgroup.BatchingConsumer` is one); its settings' ``http_host`` and ``http_port``
    say where to serve."""

    async def run(self, *, handle_signals: bool = ..., task_status: TaskStatus[None] = ...) -> None:
        """Consume until stopped; signals ``task_status`` once the first assignment is applied."""


async def run_with_operations(
    consumer: RunnableConsumer,
    *,
    handle_signals: bool = True,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``consumer`` (as ``consumer.run``) with ``/metrics``, ``/healthz`` and ``/readyz``
    served on ``settings.http_host:settings.http_port`` when the port is set.

    The server listens before the consumer starts to join and stops when ``consumer.run``
    returns. Errors come out as ``consumer.run`` raises them, not wrapped in an exception
    group: a port that cannot be bound raises
    :class:`~capgroup.operations.http.OperationsServerError` (a
    :class:`~capgroup.SettingsError`) before anything joins; a fatal group error (e.g.
    :class:`~capgroup.errors.FencedInstanceError`) or
    :class:`~capgroup.runtime.consumer.ShutdownForcedError` propagates as it is.
    """
    settings = consumer.settings
    if not settings.http_port:
        await consumer.run(handle_signals=handle_signals, task_status=task_status)
        return
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(serve_operations, consumer, settings.http_host, settings.http_port)
            try:
                await consumer.run(handle_signals=handle_signals, task_status=task_status)
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        cancelled = anyio.get_cancelled_exc_class()
        errors = [e for e in leaf_exceptions(group) if not isinstance(e, cancelled)]
        if len(errors) != 1:
            raise
        raise errors[0] from None
