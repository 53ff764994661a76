"""One place builds Kafka client options, and every client capgroup creates uses it.

A connection setting added to :func:`capgroup.connection.client_options` must reach the
coordinator transport, the fetcher, the dead-letter producer and the admin clients; these tests
read the options back from each real aiokafka client (nothing connects: the address is
unreachable and no client is started).
"""

from __future__ import annotations

from typing import Any

import pytest

from capgroup.connection import ClientRole, client_options
from capgroup.runtime.clients import AiokafkaClients
from capgroup.settings import load_settings

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

SETTINGS = load_settings(
    group_id="g",
    topics=["events"],
    bootstrap_servers="broker-a.example:9092,broker-b.example:9093",
    client_id="svc",
    request_timeout_ms=45_000,
)


def _seen(client: Any) -> dict[str, Any]:
    """What an aiokafka ``AIOKafkaClient`` was built with."""
    return {
        "bootstrap_servers": client._bootstrap_servers,
        "client_id": client._client_id,
        "request_timeout_ms": client._request_timeout_ms,
    }


def _expected(role: ClientRole) -> dict[str, Any]:
    options = client_options(SETTINGS, role)
    return {k: options[k] for k in ("bootstrap_servers", "client_id", "request_timeout_ms")}


def test_options_carry_the_connection_settings_and_a_client_id_per_role() -> None:
    ids = {role: client_options(SETTINGS, role)["client_id"] for role in ClientRole}
    assert ids == {
        ClientRole.COORDINATOR: "svc",
        ClientRole.FETCHER: "svc-fetch",
        ClientRole.DEAD_LETTER: "svc-dlq",
        ClientRole.RELAY: "svc-relay",
        ClientRole.ADMIN: "svc-admin",
        ClientRole.HOTKEYS: "svc-hotkeys",
        ClientRole.RANGE_JOBS: "svc-rangejobs",
    }
    for role in ClientRole:
        options = client_options(SETTINGS, role)
        assert options["bootstrap_servers"] == ["broker-a.example:9092", "broker-b.example:9093"]
        assert options["request_timeout_ms"] == 45_000


async def test_every_runtime_client_is_built_from_the_shared_options() -> None:
    clients = AiokafkaClients(SETTINGS)
    fetcher = clients.fetcher(1 << 20)
    assert _seen(fetcher._consumer._client) == _expected(ClientRole.FETCHER)
    sink = clients.dead_letter("events.dlq")
    assert _seen(sink._producer.client) == _expected(ClientRole.DEAD_LETTER)
    transport = clients.coordinator_transport()
    assert transport._options == client_options(SETTINGS, ClientRole.COORDINATOR)


async def test_the_admin_client_is_built_from_the_shared_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    from capgroup import connection

    built: list[Any] = []

    async def no_start(self: AIOKafkaAdminClient) -> None:
        built.append(self)

    async def no_close(self: AIOKafkaAdminClient) -> None:
        return None

    monkeypatch.setattr(AIOKafkaAdminClient, "start", no_start)
    monkeypatch.setattr(AIOKafkaAdminClient, "close", no_close)
    async with connection.admin_client(SETTINGS, request_timeout_ms=5000) as admin:
        assert admin is built[0]
        seen = _seen(admin._client)
    assert seen == {**_expected(ClientRole.ADMIN), "request_timeout_ms": 5000}


async def test_tls_and_sasl_reach_every_runtime_client() -> None:
    secured = load_settings(
        group_id="g",
        topics=["events"],
        bootstrap_servers="broker-a.example:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="pw-from-a-secret",
    )
    clients = AiokafkaClients(secured)
    built = [
        clients.fetcher(1 << 20)._consumer._client,
        clients.dead_letter("events.dlq")._producer.client,
    ]
    for client in built:
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == "SCRAM-SHA-512"
        assert client._sasl_plain_username == "svc"
        assert client._sasl_plain_password == "pw-from-a-secret"
        assert client._ssl_context is not None
    options = clients.coordinator_transport()._options
    assert options["security_protocol"] == "SASL_SSL"
    assert options["ssl_context"] is not None
