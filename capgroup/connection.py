"""The one place that turns :class:`~capgroup.settings.CapgroupSettings` into Kafka client options.

Every client capgroup creates (the membership engine's coordinator client, the fetcher, the
dead-letter producer and the admin clients of the CLI) takes its connection options from
:func:`client_options`. A new connection setting (TLS, SASL, a timeout) is therefore added here
once and reaches every client; a test checks that each client factory passes them through.

Options are plain keyword arguments of aiokafka's client constructors; nothing here imports
aiokafka for a PLAINTEXT cluster, so reading settings stays cheap. TLS and SASL options
(:func:`security_options`) come from :mod:`capgroup.security`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from enum import StrEnum
from typing import Any

from capgroup.settings import CapgroupSettings

__all__ = ["ClientRole", "admin_client", "client_options", "security_options"]

#: Wait before retrying a failed request or metadata refresh (aiokafka's default).
RETRY_BACKOFF_MS = 100


class ClientRole(StrEnum):
    """Which capgroup client the options are for; each gets its own client id suffix so that
    broker logs and quotas tell them apart."""

    COORDINATOR = "coordinator"
    FETCHER = "fetch"
    DEAD_LETTER = "dlq"
    RELAY = "relay"
    ADMIN = "admin"
    #: Range jobs (issue 14): the jobs and completions topics and the by-offset readers.
    RANGE_JOBS = "rangejobs"
    #: ``capgroup hotkeys``: reads a topic out of band (no group, no commits).
    HOTKEYS = "hotkeys"


def client_options(settings: CapgroupSettings, role: ClientRole) -> dict[str, Any]:
    """Keyword arguments shared by every aiokafka client capgroup builds for ``role``.

    Covers the connection (bootstrap servers, TLS and SASL), identity (client id) and request
    timing;
    role-specific options (isolation level, acks, fetch sizes) stay with the client that needs
    them.
    """
    client_id = (
        settings.client_id
        if role is ClientRole.COORDINATOR
        else (f"{settings.client_id}-{role.value}")
    )
    options: dict[str, Any] = {
        "bootstrap_servers": list(settings.bootstrap_servers),
        "client_id": client_id,
        "request_timeout_ms": settings.effective_request_timeout_ms,
        "retry_backoff_ms": RETRY_BACKOFF_MS,
    }
    return options | security_options(settings)


def security_options(settings: CapgroupSettings) -> dict[str, Any]:
    """The TLS and SASL keyword arguments of aiokafka's clients (empty for PLAINTEXT).

    ``ssl_context`` is built from the CA, certificate and key files; a password file is read
    here, so a rotated Kubernetes Secret reaches the next client built.
    """
    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return {}
    from capgroup import security

    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = security.ssl_context(settings)
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        mechanism = settings.sasl_mechanism
        options["sasl_mechanism"] = mechanism
        if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            options["sasl_plain_username"] = settings.sasl_username
            options["sasl_plain_password"] = settings.sasl_password_value()
        elif mechanism == "OAUTHBEARER":
            options["sasl_oauth_token_provider"] = security.token_provider(settings)
    return options


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
