"""The one place that turns :class:`~capgroup.settings.CapgroupSettings` into Kafka client options.

Every client capgroup creates (the membership engine's coordinator client, the fetcher, the
dead-letter producer and the admin clients of the CLI) takes its connection options from
:func:`client_options`. A new connection setting (TLS, SASL, a timeout) is therefore added here
once and reaches every client; a test checks that each client factory passes them through.

Options are plain keyword arguments of aiokafka's client constructors; nothing here imports
aiokafka, so reading settings stays cheap.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from enum import StrEnum
from typing import Any

from capgroup.settings import CapgroupSettings

__all__ = ["ClientRole", "admin_client", "client_options"]

#: Wait before retrying a failed request or metadata refresh (aiokafka's default).
RETRY_BACKOFF_MS = 100


class ClientRole(StrEnum):
    """Which capgroup client the options are for; each gets its own client id suffix so that
    broker logs and quotas tell them apart."""

    COORDINATOR = "coordinator"
    FETCHER = "fetch"
    DEAD_LETTER = "dlq"
    ADMIN = "admin"


def client_options(settings: CapgroupSettings, role: ClientRole) -> dict[str, Any]:
    """Keyword arguments shared by every aiokafka client capgroup builds for ``role``.

    Covers the connection (bootstrap servers), identity (client id) and request timing;
    role-specific options (isolation level, acks, fetch sizes) stay with the client that needs
    them.
    """
    client_id = (
        settings.client_id
        if role is ClientRole.COORDINATOR
        else (f"{settings.client_id}-{role.value}")
    )
    return {
        "bootstrap_servers": list(settings.bootstrap_servers),
        "client_id": client_id,
        "request_timeout_ms": settings.effective_request_timeout_ms,
        "retry_backoff_ms": RETRY_BACKOFF_MS,
    }


@contextlib.asynccontextmanager
async def admin_client(settings: CapgroupSettings, **overrides: Any) -> AsyncIterator[Any]:
    """A started ``AIOKafkaAdminClient`` built from :func:`client_options`, closed on exit.

    ``overrides`` replace individual options (a short request timeout for a CLI command).
    """
    from aiokafka.admin import AIOKafkaAdminClient

    client = AIOKafkaAdminClient(**{**client_options(settings, ClientRole.ADMIN), **overrides})
    try:
        await client.start()
        yield client
    finally:
        await client.close()
